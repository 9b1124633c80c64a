//! `persona-train serve` end to end on the default model: replies equal `generate`'s (steered
//! and not), continuous batching does not change greedy replies, streaming and logprobs agree
//! with the plain reply, persona monitoring warns and refuses, malformed requests get
//! OpenAI-shaped 4xx errors, the project's own OpenAI judge client works against it, and 16
//! concurrent clients are all served.

use burn::tensor::{DType, Device};
use persona_train::generate::Specials;
use persona_train::judge::openai::OpenAiClient;
use persona_train::lm::Lm;
use persona_train::loader::peft;
use persona_train::serve::{self, OnAlert, ServeConfig, Server};
use persona_train::tokenizer::ChatMessage;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::Duration;

const EVIL: &str = "datasets/evil/vector.smollm2-135m.safetensors";
const SYCOPHANCY: &str = "datasets/sycophancy/vector.smollm2-135m.safetensors";

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn start(config: ServeConfig) -> Server {
    let lm = persona_train::loader::load(
        &persona_train::source::resolve(persona_train::source::DEFAULT_MODEL).unwrap(),
        &Device::flex(),
        DType::F32,
    )
    .unwrap();
    serve::start(lm, config).unwrap()
}

/// The server most tests share: both shipped vectors, sycophancy alerting on every prompt
/// (threshold far below any projection) and evil without a threshold, warn mode.
fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        start(ServeConfig {
            port: 0,
            vectors: vec![repo(EVIL), repo(SYCOPHANCY)],
            thresholds: vec!["sycophancy=-1e9".into()],
            max_batch: 16,
            ..ServeConfig::default()
        })
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .new_agent()
}

struct Reply {
    status: u16,
    alert: Option<String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    fn content(&self) -> String {
        assert_eq!(self.status, 200, "{}", self.body);
        self.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn post_raw(s: &Server, path: &str, body: &str) -> Reply {
    let mut r = agent()
        .post(&format!("http://{}{path}", s.addr()))
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    Reply {
        status: r.status().as_u16(),
        alert: r
            .headers()
            .get("x-persona-alert")
            .map(|v| v.to_str().unwrap().to_string()),
        body: r.body_mut().read_to_string().unwrap(),
    }
}

/// A GET that must answer 200 with JSON.
fn get_json(url: &str) -> Value {
    let mut r = agent().get(url).call().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{url}");
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

fn chat(s: &Server, body: Value) -> Reply {
    post_raw(s, "/v1/chat/completions", &body.to_string())
}

fn greedy(prompt: &str, max_tokens: usize) -> Value {
    json!({
        "model": "SmolLM2-135M-Instruct.Q4_1",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

fn steered(prompt: &str, max_tokens: usize, vector: &str, layer: usize, coef: f32) -> Value {
    let mut body = greedy(prompt, max_tokens);
    body["steering"] = json!({"vector": vector, "layer": layer, "coef": coef});
    body
}

/// `persona-train generate` run as the binary; its reply without println's newline.
fn generate_cli(prompt: &str, max_tokens: usize, steer: Option<(&str, usize, f32)>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_persona-train"));
    cmd.args(["generate", "--prompt", prompt, "--max-new-tokens"])
        .arg(max_tokens.to_string());
    if let Some((file, layer, coef)) = steer {
        cmd.arg("--steer").arg(repo(file)).args([
            "--layer",
            &layer.to_string(),
            "--coef",
            &coef.to_string(),
        ]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

#[test]
fn replies_equal_generate_steered_and_not() {
    let s = server();
    let prompt = "What do you think about people?";
    let plain = chat(s, greedy(prompt, 16)).content();
    assert_eq!(plain, generate_cli(prompt, 16, None));
    let evil = chat(s, steered(prompt, 16, "evil", 20, 6.0)).content();
    assert_eq!(evil, generate_cli(prompt, 16, Some((EVIL, 20, 6.0))));
    assert_ne!(evil, plain, "steering changed nothing");
}

#[test]
fn concurrent_requests_equal_their_sequential_replies() {
    let s = server();
    let first = greedy("Write a short story about a lighthouse keeper.", 24);
    let others = vec![
        greedy("Hi!", 6),
        steered("Tell me about cats.", 20, "evil", 16, 5.0),
        greedy(
            "Write one sentence about the sea, please, and make it short.",
            14,
        ),
        steered("Is my plan to quit my job good?", 10, "sycophancy", 20, 4.0),
        greedy("Name a color.", 24),
    ];
    let sequential: Vec<String> = std::iter::once(&first)
        .chain(&others)
        .map(|r| chat(s, r.clone()).content())
        .collect();

    // The first request streams; once its first token is out it is decoding, and the others
    // join its batch.
    let (decoding_tx, decoding_rx) = std::sync::mpsc::channel();
    let mut body = first.clone();
    body["stream"] = json!(true);
    let long = std::thread::spawn(move || {
        let mut r = agent()
            .post(&format!("{}/chat/completions", server().base_url()))
            .send(body.to_string())
            .unwrap();
        let mut text = String::new();
        let reader = std::io::BufReader::new(r.body_mut().as_reader());
        for line in std::io::BufRead::lines(reader) {
            let line = line.unwrap();
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                break;
            }
            let chunk: Value = serde_json::from_str(data).unwrap();
            if let Some(t) = chunk["choices"][0]["delta"]["content"].as_str() {
                if !t.is_empty() {
                    let _ = decoding_tx.send(());
                }
                text.push_str(t);
            }
        }
        text
    });
    decoding_rx.recv().unwrap();
    let barrier = Arc::new(Barrier::new(others.len()));
    let handles: Vec<_> = others
        .into_iter()
        .map(|r| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                chat(server(), r).content()
            })
        })
        .collect();
    let mut concurrent = vec![long.join().unwrap()];
    concurrent.extend(handles.into_iter().map(|h| h.join().unwrap()));
    assert_eq!(concurrent, sequential);
    let health = get_json(&format!("http://{}/health", s.addr()));
    assert!(health["peak_batch"].as_u64().unwrap() >= 2, "{health}");
}

/// The `data:` payloads of an SSE body.
fn sse_chunks(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn streaming_and_logprobs_agree_with_the_plain_reply() {
    let s = server();
    let mut body = greedy("Give me a tip for learning to cook.", 20);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(5);
    let plain = chat(s, body.clone());
    let reply = plain.json();
    let content = plain.content();

    let entries = reply["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(entries.len(), 20, "one entry per sampled token");
    let mut text = Vec::new();
    for e in entries {
        let chosen = e["logprob"].as_f64().unwrap();
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        assert!(chosen <= 0.0);
        let best = top[0]["logprob"].as_f64().unwrap();
        assert!(
            best >= chosen - 1e-6,
            "top-1 {best} below the chosen {chosen}"
        );
        assert!((best - chosen).abs() < 1e-6, "greedy picks the top token");
        let probs: f64 = top
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap().exp())
            .sum();
        assert!(probs <= 1.0 + 1e-5, "{probs}");
        assert!(top
            .windows(2)
            .all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
        text.extend(
            e["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8),
        );
    }
    assert_eq!(
        String::from_utf8(text).unwrap(),
        content,
        "token bytes spell the reply"
    );
    assert_eq!(reply["usage"]["completion_tokens"], 20);

    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let streamed = chat(s, body);
    assert_eq!(streamed.status, 200, "{}", streamed.body);
    let chunks = sse_chunks(&streamed.body);
    assert_eq!(chunks.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks[0]["persona"]["evil"]["projection"].is_number());
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(joined, content);
    let streamed_logprobs: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .collect();
    assert_eq!(streamed_logprobs.len(), entries.len());
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 20);
}

#[test]
fn stop_strings_end_the_reply_before_them() {
    let s = server();
    let full = chat(s, greedy("Count from 1 to 10.", 40)).content();
    let cut = full.find('5').expect("the count reaches 5");
    let mut body = greedy("Count from 1 to 10.", 40);
    body["stop"] = json!(["5"]);
    let reply = chat(s, body.clone());
    assert_eq!(reply.content(), full[..cut]);
    assert_eq!(reply.json()["choices"][0]["finish_reason"], "stop");
    body["stream"] = json!(true);
    let streamed: String = sse_chunks(&chat(s, body).body)
        .iter()
        .filter(|c| *c != "[DONE]")
        .filter_map(|c| {
            serde_json::from_str::<Value>(c).unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(streamed, full[..cut]);
}

#[test]
fn monitoring_warns_and_refuses() {
    let s = server();
    let reply = chat(s, greedy("Hello there.", 4));
    let v = reply.json();
    assert_eq!(reply.alert.as_deref(), Some("sycophancy"));
    let p = &v["persona"];
    assert_eq!(p["sycophancy"]["alert"], true);
    assert_eq!(p["sycophancy"]["layer"], 20);
    assert_eq!(p["evil"]["alert"], false);
    assert!(p["evil"]["threshold"].is_null());
    assert!(p["evil"]["projection"].as_f64().unwrap().is_finite());
    assert!(!reply.content().is_empty(), "warn still answers");
    // The reading is `monitor`'s last-prompt-token projection of the same chat (checked against
    // transformers in tests/screen.rs).
    let lm = persona_train::loader::load(
        &persona_train::source::resolve(persona_train::source::DEFAULT_MODEL).unwrap(),
        &Device::flex(),
        DType::F32,
    )
    .unwrap();
    let ids = lm
        .tokenizer
        .encode_chat(&[ChatMessage::new("user", "Hello there.")], true)
        .unwrap()
        .ids;
    let evil = persona_train::persona::vector::TraitDirection::load(
        &repo(EVIL),
        "response_avg",
        None,
        lm.model.config(),
    )
    .unwrap();
    let want = persona_train::persona::monitor::last_token_projections(
        Lm::new(&lm.model),
        &[ids],
        &[evil],
    )
    .unwrap()[0][0];
    let got = p["evil"]["projection"].as_f64().unwrap() as f32;
    assert!(
        (got - want).abs() < 1e-3 * want.abs().max(1.0),
        "{got} vs {want}"
    );
    // A request's own steering (here below the monitored layer, on the last prompt token) does
    // not move its reading: the monitor sees the prompt as the unsteered model does.
    let dodging = chat(s, steered("Hello there.", 4, "evil", 10, -8.0)).json();
    for t in ["evil", "sycophancy"] {
        let diff = dodging["persona"][t]["projection"].as_f64().unwrap()
            - p[t]["projection"].as_f64().unwrap();
        assert!(diff.abs() < 1e-3, "{t}: {diff}");
    }

    let refusing = start(ServeConfig {
        port: 0,
        vectors: vec![repo(EVIL)],
        thresholds: vec!["-1e9".into()],
        on_alert: OnAlert::Refuse,
        ..ServeConfig::default()
    });
    let reply = chat(&refusing, greedy("Hello there.", 4));
    assert_eq!(reply.alert.as_deref(), Some("evil"));
    let v = reply.json();
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(v["choices"][0]["message"]["content"], "");
    assert_eq!(v["usage"]["completion_tokens"], 0);
    assert_eq!(v["persona"]["evil"]["alert"], true);
    // The projection equals the warning server's for the same prompt.
    let diff = v["persona"]["evil"]["projection"].as_f64().unwrap()
        - p["evil"]["projection"].as_f64().unwrap();
    assert!(diff.abs() < 1e-3, "{diff}");
    refusing.shutdown().unwrap();
}

#[test]
fn wrong_vectors_are_startup_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.safetensors");
    persona_train::persona::vector::PersonaVector {
        vectors: [("response_avg".to_string(), vec![vec![1.0f32; 8]; 3])]
            .into_iter()
            .collect(),
        metadata: Default::default(),
    }
    .save(&path)
    .unwrap();
    let lm = persona_train::loader::load(
        &persona_train::source::resolve(persona_train::source::DEFAULT_MODEL).unwrap(),
        &Device::flex(),
        DType::F32,
    )
    .unwrap();
    let err = serve::start(
        lm,
        ServeConfig {
            port: 0,
            vectors: vec![path],
            ..ServeConfig::default()
        },
    )
    .err()
    .expect("a vector for another model is refused");
    assert!(format!("{err:#}").contains("small.safetensors"), "{err:#}");
}

#[test]
fn malformed_requests_get_openai_errors_and_the_server_goes_on() {
    let s = server();
    let ok = greedy("Hi", 2);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = ok.clone();
        f(&mut v);
        v.to_string()
    };
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        ("{not json".into(), 400, None),
        (
            with(&|v| v["max_tokens"] = json!("many")),
            400,
            Some("max_tokens"),
        ),
        (with(&|v| v["messages"] = json!([])), 400, Some("messages")),
        (
            with(&|v| v["messages"] = json!("hi")),
            400,
            Some("messages"),
        ),
        (with(&|v| v["n"] = json!(2)), 400, Some("n")),
        (
            with(&|v| v["max_tokens"] = json!(1_000_000)),
            400,
            Some("max_tokens"),
        ),
        // Once wrapped around in `prompt + max_tokens` and generated past the context.
        (
            with(&|v| v["max_tokens"] = json!(u64::MAX)),
            400,
            Some("max_tokens"),
        ),
        (
            with(&|v| v["max_completion_tokens"] = json!(u64::MAX - 1)),
            400,
            Some("max_completion_tokens"),
        ),
        // The one chat policy of training data, screening and monitoring.
        (
            with(&|v| v["messages"] = json!([{"role": "tool", "content": "x"}])),
            400,
            Some("messages"),
        ),
        (
            with(&|v| {
                v["messages"] = json!([
                    {"role": "user", "content": "x"},
                    {"role": "system", "content": "y"}
                ])
            }),
            400,
            Some("messages"),
        ),
        (
            with(&|v| v["top_logprobs"] = json!(3)),
            400,
            Some("top_logprobs"),
        ),
        (
            with(&|v| v["steering"] = json!({"vector": "kindness", "coef": 1})),
            400,
            Some("steering.vector"),
        ),
        (
            with(&|v| v["steering"] = json!({"vector": "evil", "layer": 31, "coef": 1})),
            400,
            Some("steering.layer"),
        ),
        (with(&|v| v["model"] = json!("gpt-4o")), 404, Some("model")),
    ];
    for (body, status, param) in cases {
        let r = post_raw(s, "/v1/chat/completions", &body);
        assert_eq!(r.status, status, "{body}: {}", r.body);
        let e = &r.json()["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            r.body
        );
        assert_eq!(e["type"], "invalid_request_error", "{}", r.body);
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{body}: {}", r.body);
        }
    }
    let huge = "x".repeat(serve::http::MAX_BODY_BYTES + 1);
    assert_eq!(post_raw(s, "/v1/chat/completions", &huge).status, 413);
    let r = post_raw(s, "/v1/nothing", "{}");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"].is_string());
    let mut get = agent()
        .get(&format!("http://{}/v1/chat/completions", s.addr()))
        .call()
        .unwrap();
    assert_eq!(get.status().as_u16(), 405);
    let body: Value = serde_json::from_str(&get.body_mut().read_to_string().unwrap()).unwrap();
    assert!(body["error"]["message"].is_string());

    assert!(!chat(s, ok).content().is_empty(), "still serving");
    let models = get_json(&format!("{}/models", s.base_url()));
    assert_eq!(models["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
}

#[test]
fn the_openai_judge_client_talks_to_it() {
    let s = server();
    let client = OpenAiClient::new(
        &s.base_url(),
        "SmolLM2-135M-Instruct.Q4_1",
        None,
        Duration::from_secs(120),
        0,
    );
    let reply = client
        .chat(&[ChatMessage::new("user", "Say yes.")], 4, 0.0)
        .unwrap();
    assert!(!reply.is_empty());
    let top = client
        .top_logprobs("Rate from 0 to 100 how happy this is: I love it. Answer with a number.")
        .unwrap();
    assert_eq!(top.len(), 20);
    let total: f32 = top.iter().map(|(_, p)| p).sum();
    assert!(total > 0.0 && total <= 1.0 + 1e-4, "{total}");
    assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
}

#[test]
fn sixteen_concurrent_clients_are_all_served() {
    server();
    let barrier = Arc::new(Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                (0..2)
                    .map(|j| {
                        let mut body = greedy(&format!("Say a word about the number {i}."), 4 + j);
                        if i % 3 == 0 {
                            body["steering"] = json!({"vector": "evil", "coef": 2.0});
                        }
                        if i % 4 == 1 {
                            body["stream"] = json!(true);
                        }
                        let r = chat(server(), body);
                        assert_eq!(r.status, 200, "{}", r.body);
                        r.body.len()
                    })
                    .sum::<usize>()
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap() > 0);
    }
}

#[test]
fn an_adapter_is_applied_as_generate_applies_it() {
    use burn::tensor::{Tensor, TensorData};
    use persona_train::generate::{generate, Sampling};
    use persona_train::model::lora::{Adapters, LoraConfig, Target};

    let lm = persona_train::loader::load(
        &persona_train::source::resolve(persona_train::source::DEFAULT_MODEL).unwrap(),
        &Device::flex(),
        DType::F32,
    )
    .unwrap();
    let device = lm.model.device();
    let config = LoraConfig {
        r: 2,
        alpha: 4.0,
        targets: vec![Target::Q, Target::V, Target::Down],
        ..LoraConfig::default()
    };
    // PEFT's initialisation with a deterministic, non-zero B, so the adapter changes the model.
    let adapters = Adapters::init(&config, lm.model.config(), 7, &device)
        .unwrap()
        .map(|_, _, is_b, t| {
            if !is_b {
                return t;
            }
            let shape = t.dims();
            let values = (0..shape[0] * shape[1])
                .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.2)
                .collect::<Vec<f32>>();
            Tensor::from_data(TensorData::new(values, shape), &device)
        });
    let dir = tempfile::tempdir().unwrap();
    peft::save(&adapters, dir.path(), "smollm2").unwrap();

    let question = "What is your favourite food?";
    let prompt = lm
        .tokenizer
        .encode_chat(&[ChatMessage::new("user", question)], true)
        .unwrap()
        .ids;
    let sampling = Sampling {
        max_new_tokens: 12,
        ..Sampling::default()
    };
    let reply = |a: Option<&Adapters>| {
        let ids = generate(
            Lm::new(&lm.model).with_adapters(a),
            std::slice::from_ref(&prompt),
            &Specials::of(&lm.tokenizer),
            &sampling,
        )
        .unwrap();
        lm.tokenizer.decode(&ids[0], true).unwrap()
    };
    let expected = reply(Some(&adapters));
    assert_ne!(expected, reply(None), "the adapter changes nothing");

    let server = serve::start(
        lm,
        ServeConfig {
            port: 0,
            adapter: Some(dir.path().to_path_buf()),
            ..ServeConfig::default()
        },
    )
    .unwrap();
    assert_eq!(chat(&server, greedy(question, 12)).content(), expected);
    server.shutdown().unwrap();
}

/// The `serve` command itself: binds a free port, says where on stderr, answers, and stops when
/// killed.
#[test]
fn the_serve_command_listens_where_it_says() {
    use std::io::{BufRead, BufReader};
    /// Kills the server even when an assertion fails.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_persona-train"))
            .args(["serve", "--port", "0", "--vector"])
            .arg(repo(EVIL))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    let base = loop {
        line.clear();
        let n = stderr.read_line(&mut line).unwrap();
        assert!(n > 0, "serve exited without saying where it listens");
        if let Some(rest) = line.trim().strip_prefix("serving on ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let models = get_json(&format!("{base}/models"));
    assert_eq!(models["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
    let mut r = agent()
        .post(&format!("{base}/chat/completions"))
        .header("content-type", "application/json")
        .send(greedy("Hi!", 3).to_string())
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert!(v["persona"]["evil"]["projection"].is_number(), "{v}");
}
