//! Tokenizers built from GGUF metadata or a Hugging Face directory.
//!
//! The reference is transformers: a GGUF tokenizer is built the way its GGUF converter
//! (`integrations/gguf/gguf_tokenizer_mapping.py`) builds one, so that ids match what the model was
//! evaluated with there, and chat templates render as `apply_chat_template` renders them.

pub mod chat;
mod spm;

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, DecoderWrapper, SplitDelimiterBehavior};

pub use chat::ChatMessage;
use chat::{ChatTemplate, SpecialTokens};

use crate::gguf::GgufFile;

/// Tokens that end a turn in the chat formats of common models; any of them present as an added
/// token stops generation, because instruct models often emit one other than their EOS.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|end|>",
];

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The Llama 3 split regex, as transformers' GGUF converter and llama.cpp use it.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex: Llama 3's with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a byte-level BPE vocabulary splits text before merging, from `tokenizer.ggml.pre`.
enum PreTokenizer {
    /// GPT-2's regex inside `ByteLevel`.
    Gpt2,
    /// A `Split` on this regex, then `ByteLevel` without its own regex.
    Split(&'static str),
}

impl PreTokenizer {
    /// The names transformers maps to each split; `smollm` gets no entry there, so it keeps the
    /// GPT-2 default of `GPT2Tokenizer` (llama.cpp and the original tokenizer.json split digits
    /// individually first, which differs only for whitespace runs before digits).
    const SUPPORTED: &'static str = "smollm, llama-bpe, llama3, llama-v3, qwen2, deepseek-r1-qwen";

    fn from_gguf_name(name: &str) -> Option<Self> {
        match name {
            "smollm" => Some(Self::Gpt2),
            "llama-bpe" | "llama3" | "llama-v3" => Some(Self::Split(LLAMA3_SPLIT)),
            "qwen2" | "deepseek-r1-qwen" => Some(Self::Split(QWEN2_SPLIT)),
            _ => None,
        }
    }
}

/// How a vocabulary spells the text its tokens stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spelling {
    /// GPT-2's byte alphabet (byte-level BPE, and any `tokenizer.json`).
    ByteLevel,
    /// SentencePiece: `▁` for a space, `<0xNN>` byte-fallback tokens.
    SentencePiece,
}

impl Spelling {
    /// A `tokenizer.json`'s spelling, from its decoder: SentencePiece-style vocabularies decode
    /// through `ByteFallback` or `Metaspace`.
    fn of_decoder(decoder: Option<&DecoderWrapper>) -> Self {
        let sentencepiece = |d: &DecoderWrapper| {
            matches!(
                d,
                DecoderWrapper::ByteFallback(_) | DecoderWrapper::Metaspace(_)
            )
        };
        match decoder {
            Some(DecoderWrapper::Sequence(seq)) if seq.get_decoders().iter().any(sentencepiece) => {
                Self::SentencePiece
            }
            Some(d) if sentencepiece(d) => Self::SentencePiece,
            _ => Self::ByteLevel,
        }
    }
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    spelling: Spelling,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    stop_ids: Vec<u32>,
    /// The named special tokens' strings, as the chat template and `tokenizer_config.json` see them.
    special_tokens: SpecialTokens,
    /// The template, or why there is none (a file without one, or one that does not compile).
    chat_template: std::result::Result<ChatTemplate, String>,
    /// Where the tokenizer came from, for error messages.
    origin: String,
}

pub struct EncodedChat {
    pub ids: Vec<u32>,
    /// Index in `ids` of the first token of the final assistant message, when the chat ends with one.
    pub response_start: Option<usize>,
    /// One past the last token overlapping that message's content (the end-of-turn tokens the
    /// template appends after it are not part of the response).
    pub response_end: Option<usize>,
}

/// The special tokens of a tokenizer, by content and id.
struct Specials {
    tokens: SpecialTokens,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
}

type Special = Option<(String, u32)>;

impl Specials {
    /// From each special token's (content, id), where the file names one.
    fn new(bos: Special, eos: Special, unk: Special, pad: Special) -> Self {
        let id = |s: &Special| s.as_ref().map(|s| s.1);
        let content = |s: Special| s.map(|s| s.0);
        Self {
            bos: id(&bos),
            eos: id(&eos),
            pad: id(&pad),
            tokens: SpecialTokens {
                bos: content(bos),
                eos: content(eos),
                unk: content(unk),
                pad: content(pad),
            },
        }
    }
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes: its vocabulary, merges, special tokens and chat
    /// template (`tokenizer.ggml.*`, `tokenizer.chat_template`).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let path = g.path().display().to_string();
        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let model = g.get_str("tokenizer.ggml.model")?;
        let (mut inner, spelling) = match model {
            "gpt2" => (byte_level_from_gguf(g, &tokens)?, Spelling::ByteLevel),
            "llama" => (spm::from_gguf(g, &tokens)?, Spelling::SentencePiece),
            _ => bail!(
                "{path}: metadata key 'tokenizer.ggml.model' is '{model}'; supported: 'gpt2' (byte-level BPE), 'llama' (SentencePiece)"
            ),
        };
        let special_id = |key: &str| -> Result<Option<(String, u32)>> {
            let key = format!("tokenizer.ggml.{key}");
            let Some(id) = optional(g, &key, GgufFile::get_u32)? else {
                return Ok(None);
            };
            let token = tokens.get(id as usize).ok_or_else(|| {
                anyhow!("{path}: metadata key '{key}' is {id}, past the {} tokens of tokenizer.ggml.tokens", tokens.len())
            })?;
            Ok(Some((token.to_string(), id)))
        };
        let specials = Specials::new(
            special_id("bos_token_id")?,
            special_id("eos_token_id")?,
            special_id("unknown_token_id")?,
            special_id("padding_token_id")?,
        );
        let flag = |key: &str, default: bool| -> Result<bool> {
            let key = format!("tokenizer.ggml.{key}");
            Ok(optional(g, &key, GgufFile::get_bool)?.unwrap_or(default))
        };
        // llama.cpp and transformers add BOS to a SentencePiece vocabulary that does not say.
        let add_bos = flag("add_bos_token", spelling == Spelling::SentencePiece)?;
        let add_eos = flag("add_eos_token", false)?;
        add_named_specials(&mut inner, &specials.tokens);
        inner.with_post_processor(Some(
            bos_eos_template(&specials, add_bos, add_eos)
                .with_context(|| format!("{path}: tokenizer.ggml.add_bos_token/add_eos_token"))?,
        ));
        let template_source =
            optional(g, "tokenizer.chat_template", GgufFile::get_str)?.map(str::to_string);
        let chat_template = compile_template(template_source, &specials.tokens, || {
            format!("{path}: metadata key 'tokenizer.chat_template'")
        });
        Ok(Self::assemble(
            inner,
            spelling,
            specials,
            chat_template,
            path,
        ))
    }

    /// Loads `tokenizer.json` and `tokenizer_config.json` (special tokens, `add_bos_token`,
    /// `add_eos_token`, `chat_template`) from a Hugging Face model directory. A `chat_template.jinja`
    /// or `chat_template.json` file there takes precedence over the config's template.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let tokenizer_path = dir.join("tokenizer.json");
        let mut inner = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| anyhow!("{}: {e}", tokenizer_path.display()))?;
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid JSON", config_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
            Err(e) => return Err(e).with_context(|| format!("reading {}", config_path.display())),
        };
        let config_name = config_path.display().to_string();
        let token = |field: &str| -> Result<Option<String>> {
            match config.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                // Older configs store an AddedToken object.
                Some(serde_json::Value::Object(o)) => match o.get("content") {
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    _ => bail!(
                        "{config_name}: field '{field}' is an object without a string 'content'"
                    ),
                },
                Some(other) => {
                    bail!("{config_name}: field '{field}' is {other}, expected a string")
                }
            }
        };
        let tokens = SpecialTokens {
            bos: token("bos_token")?,
            eos: token("eos_token")?,
            unk: token("unk_token")?,
            pad: token("pad_token")?,
        };
        add_named_specials(&mut inner, &tokens);
        let id = |t: &Option<String>| t.as_deref().and_then(|t| inner.token_to_id(t));
        let specials = Specials {
            bos: id(&tokens.bos),
            eos: id(&tokens.eos),
            pad: id(&tokens.pad),
            tokens,
        };

        let flag = |field: &str| -> Result<Option<bool>> {
            match config.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
                Some(other) => {
                    bail!("{config_name}: field '{field}' is {other}, expected a boolean")
                }
            }
        };
        let (add_bos, add_eos) = (flag("add_bos_token")?, flag("add_eos_token")?);
        // transformers keeps tokenizer.json's post-processor unless the config states either flag,
        // and then rebuilds it from both.
        if add_bos.is_some() || add_eos.is_some() {
            let template = bos_eos_template(
                &specials,
                add_bos.unwrap_or(false),
                add_eos.unwrap_or(false),
            )
            .with_context(|| format!("{config_name}: add_bos_token/add_eos_token"))?;
            inner.with_post_processor(Some(template));
        }

        let (source, origin) = hf_chat_template(dir, &config)?;
        let chat_template = compile_template(source, &specials.tokens, || origin);
        let spelling = Spelling::of_decoder(inner.get_decoder());
        Ok(Self::assemble(
            inner,
            spelling,
            specials,
            chat_template,
            dir.display().to_string(),
        ))
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        spelling: Spelling,
        specials: Specials,
        chat_template: std::result::Result<ChatTemplate, String>,
        origin: String,
    ) -> Self {
        let added: HashSet<u32> = inner.get_added_tokens_decoder().into_keys().collect();
        let mut stop_ids: Vec<u32> = specials.eos.into_iter().collect();
        for id in END_OF_TURN_TOKENS
            .iter()
            .filter_map(|t| inner.token_to_id(t))
        {
            if added.contains(&id) && !stop_ids.contains(&id) {
                stop_ids.push(id);
            }
        }
        Self {
            inner,
            spelling,
            bos: specials.bos,
            eos: specials.eos,
            pad: specials.pad,
            stop_ids,
            special_tokens: specials.tokens,
            chat_template,
            origin,
        }
    }

    /// Writes `tokenizer.json` (the tokenizer as built, post-processor included) and
    /// `tokenizer_config.json` (special tokens, chat template) into `dir`, so that
    /// [`Tokenizer::from_hf_dir`] and transformers' `AutoTokenizer` rebuild this tokenizer.
    ///
    /// The config names `PreTrainedTokenizerFast`, which takes `tokenizer.json` as it is (a
    /// model-specific class could rebuild its own pre-tokenizer), and states no
    /// `add_bos_token`/`add_eos_token`, so the serialized post-processor stays in force.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        let tokenizer_path = dir.join("tokenizer.json");
        self.inner
            .save(&tokenizer_path, true)
            .map_err(|e| anyhow!("cannot write {}: {e}", tokenizer_path.display()))?;
        let mut config = serde_json::Map::new();
        config.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        let t = &self.special_tokens;
        for (field, token) in [
            ("bos_token", &t.bos),
            ("eos_token", &t.eos),
            ("unk_token", &t.unk),
            ("pad_token", &t.pad),
        ] {
            if let Some(token) = token {
                config.insert(field.into(), token.as_str().into());
            }
        }
        // Our decode never cleans up spaces before punctuation.
        config.insert("clean_up_tokenization_spaces".into(), false.into());
        if let Ok(template) = &self.chat_template {
            config.insert("chat_template".into(), template.source().into());
        }
        let config_path = dir.join("tokenizer_config.json");
        crate::atomic::write_json(&config_path, &serde_json::Value::Object(config))
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow!("{}: encoding failed: {e}", self.origin))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| anyhow!("{}: decoding failed: {e}", self.origin))
    }

    /// The text `continuation` adds after `prompt` (special tokens skipped), as transformers'
    /// text-generation pipeline cuts it: the decoded prompt off the decoded whole. Decoding the
    /// continuation alone would lose what spans the boundary, such as the leading space a
    /// SentencePiece decoder strips from the start of a text.
    pub fn decode_continuation(&self, prompt: &[u32], continuation: &[u32]) -> Result<String> {
        let whole: Vec<u32> = prompt.iter().chain(continuation).copied().collect();
        let whole = self.decode(&whole, true)?;
        let prompt = self.decode(prompt, true)?;
        match whole.get(prompt.len()..) {
            Some(rest) if whole.starts_with(&prompt) => Ok(rest.to_string()),
            _ => self.decode(continuation, true),
        }
    }

    /// Number of ids the tokenizer can produce, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The largest id the tokenizer can produce, added tokens included (ids may have gaps, so
    /// this can exceed `vocab_size() - 1`).
    pub fn max_id(&self) -> Option<u32> {
        self.inner.get_vocab(true).into_values().max()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// The id to pad batches with: the pad token, else EOS, else 0 (padding is masked, so any
    /// id in the vocabulary does).
    pub fn pad_or_eos(&self) -> u32 {
        self.pad.or(self.eos).unwrap_or(0)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The bytes one token stands for (what the OpenAI API's logprobs report as `bytes`): a
    /// byte-level BPE token's characters mapped back to bytes, a SentencePiece token's `<0xNN>`
    /// byte or text with `▁` as a space, an added token's text as is.
    /// A token may be part of a multi-byte character, so the bytes need not be valid UTF-8.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(token) = self.inner.id_to_token(id) else {
            return Vec::new();
        };
        let added = self
            .inner
            .get_added_vocabulary()
            .get_added_tokens_decoder()
            .contains_key(&id);
        if added {
            return token.into_bytes();
        }
        if self.spelling == Spelling::SentencePiece {
            return spm::token_bytes(&token);
        }
        // A token outside the byte alphabet (llama.cpp wrote some as plain text) stands for itself.
        let table = bytes_to_unicode();
        let bytes: Option<Vec<u8>> = token
            .chars()
            .map(|c| table.iter().position(|&t| t == c).map(|b| b as u8))
            .collect();
        bytes.unwrap_or_else(|| token.into_bytes())
    }

    /// Ids that end a generation: EOS plus end-of-turn tokens present in the vocab (<|im_end|>,
    /// <|eot_id|>, <|endoftext|>, <|end_of_text|> ...).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Whether chats can be rendered: false for base models, whose files carry no template.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_ok()
    }

    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_ref()
            .map_err(|why| anyhow!("{why}"))?;
        template
            .render(messages, add_generation_prompt)
            .with_context(|| format!("{}: rendering the chat template", self.origin))
    }

    /// Renders and tokenizes a chat (without adding special tokens: templates write their own, as
    /// transformers assumes) and finds where the final assistant message starts.
    ///
    /// The start is the first token overlapping that message's content in the rendered text, so a
    /// token that BPE merged across the boundary counts as part of the response.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<EncodedChat> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        let encoding = self
            .inner
            .encode(text.as_str(), false)
            .map_err(|e| anyhow!("{}: encoding the rendered chat failed: {e}", self.origin))?;
        let (response_start, response_end) = match messages.split_last() {
            Some((last, history)) if last.role == "assistant" => {
                let (start, len) = self.content_span(&text, history, &last.content)?;
                let offsets = encoding.get_offsets();
                let first = offsets
                    .iter()
                    .position(|&(_, end)| end > start)
                    .unwrap_or(offsets.len());
                let end = offsets[first..]
                    .iter()
                    .position(|&(begin, _)| begin >= start + len)
                    .map_or(offsets.len(), |i| first + i);
                (Some(first), Some(end))
            }
            _ => (None, None),
        };
        Ok(EncodedChat {
            ids: encoding.get_ids().to_vec(),
            response_start,
            response_end,
        })
    }

    /// Byte offset and length in `text` (the whole rendered chat) of the final message's `content`.
    ///
    /// The content is searched for after the rendered history with a generation prompt, when the chat
    /// starts with that; otherwise its last occurrence is taken. Templates that trim the content are
    /// matched on the trimmed text.
    fn content_span(
        &self,
        text: &str,
        history: &[ChatMessage],
        content: &str,
    ) -> Result<(usize, usize)> {
        let after = match self.apply_chat_template(history, true) {
            Ok(prompt) if text.starts_with(&prompt) => Some(prompt.len()),
            _ => None,
        };
        let find = |needle: &str| match after {
            Some(from) => text[from..].find(needle).map(|i| from + i),
            None => text.rfind(needle),
        };
        let trimmed = content.trim();
        find(content)
            .map(|at| (at, content.len()))
            .or_else(|| find(trimmed).map(|at| (at, trimmed.len())))
            .ok_or_else(|| {
            anyhow!(
                "{}: the chat template does not reproduce the final assistant message's content, so its tokens cannot be located",
                self.origin
            )
        })
    }
}

/// A metadata value that may be absent, but must have the right type when present.
fn optional<'a, T>(
    g: &'a GgufFile,
    key: &str,
    get: impl FnOnce(&'a GgufFile, &str) -> Result<T>,
) -> Result<Option<T>> {
    g.get(key).map(|_| get(g, key)).transpose()
}

/// The byte-level BPE vocabulary of a GGUF file (`tokenizer.ggml.model = "gpt2"`), with its control
/// and user-defined tokens added.
fn byte_level_from_gguf(g: &GgufFile, tokens: &[&str]) -> Result<tokenizers::Tokenizer> {
    let path = g.path().display();
    let pre = g.get_str("tokenizer.ggml.pre")?;
    let pre_tokenizer = PreTokenizer::from_gguf_name(pre).ok_or_else(|| {
        anyhow!(
            "{path}: metadata key 'tokenizer.ggml.pre' is '{pre}', which is not supported (supported: {})",
            PreTokenizer::SUPPORTED
        )
    })?;
    let merges = g.get_str_array("tokenizer.ggml.merges")?;
    let token_types =
        optional(g, "tokenizer.ggml.token_type", GgufFile::get_i32_array)?.unwrap_or_default();
    let mut inner = byte_level_bpe(tokens, &merges, pre_tokenizer).with_context(|| {
        format!("{path}: building the BPE tokenizer from tokenizer.ggml.tokens/merges")
    })?;
    let alphabet = byte_alphabet();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    // A control token outside the byte alphabet is a llama.cpp mislabel: adding it would give it a
    // new id past the model's vocabulary, so transformers skips it, as we do.
    let of_type = |wanted: i32, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&token_types)
            .filter(|&(t, &ty)| ty == wanted && in_alphabet(t))
            .map(|(t, _)| AddedToken::from(*t, special).normalized(false))
            .collect()
    };
    inner.add_special_tokens(&of_type(TOKEN_TYPE_CONTROL, true));
    inner.add_tokens(&of_type(TOKEN_TYPE_USER_DEFINED, false));
    Ok(inner)
}

/// transformers' byte-level BPE (`GPT2Tokenizer`) over a GGUF vocabulary, with the file's split regex.
fn byte_level_bpe(
    tokens: &[&str],
    merges: &[&str],
    pre: PreTokenizer,
) -> Result<tokenizers::Tokenizer> {
    let spelling = bytes_to_unicode();
    let alphabet = byte_alphabet();
    // Tokens are stored in the byte alphabet, except some (spaces, raw UTF-8) that llama.cpp wrote
    // as plain text; those are respelled so BPE can reach them. Later duplicates win, as in a Python dict.
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, &token)| {
            let key = if token.chars().all(|c| alphabet.contains(&c)) {
                token.to_string()
            } else {
                token.bytes().map(|b| spelling[b as usize]).collect()
            };
            (key, id as u32)
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, parse_merges(merges)?)
        .build()
        .map_err(|e| anyhow!("{e}"))?;

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    match pre {
        PreTokenizer::Gpt2 => {
            tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
        PreTokenizer::Split(regex) => {
            let split = Split::new(
                SplitPattern::Regex(regex.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| anyhow!("split regex: {e}"))?;
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])));
        }
    }
    tokenizer.with_decoder(Some(ByteLevel::default()));
    Ok(tokenizer)
}

/// `tokenizer.ggml.merges`: "left right" per merge, best first.
fn parse_merges(merges: &[&str]) -> Result<Vec<(String, String)>> {
    merges
        .iter()
        .enumerate()
        .map(|(i, merge)| {
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    anyhow!("merge {i} ('{merge}') is not two tokens separated by a space")
                })
        })
        .collect()
}

/// GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the others are
/// shifted past U+0100 so every byte has a visible, non-space character.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[byte as usize] = if printable {
            char::from(byte)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or_default()
        };
    }
    table
}

fn byte_alphabet() -> HashSet<char> {
    bytes_to_unicode().into_iter().collect()
}

/// transformers adds the named special tokens (bos/eos/unk/pad) as special added tokens when they
/// are not added tokens already, so they are matched whole in text.
fn add_named_specials(tokenizer: &mut tokenizers::Tokenizer, tokens: &SpecialTokens) {
    let added: HashSet<String> = tokenizer
        .get_added_tokens_decoder()
        .into_values()
        .map(|t| t.content)
        .collect();
    let missing: Vec<AddedToken> = [&tokens.bos, &tokens.eos, &tokens.unk, &tokens.pad]
        .into_iter()
        .flatten()
        .filter(|t| !added.contains(t.as_str()))
        .map(|t| AddedToken::from(t.as_str(), true))
        .collect();
    tokenizer.add_special_tokens(&missing);
}

/// The post-processor transformers' `update_post_processor` builds: BOS and/or EOS around the text,
/// each only when the tokenizer has that token (transformers drops the flag otherwise).
fn bos_eos_template(
    specials: &Specials,
    add_bos: bool,
    add_eos: bool,
) -> Result<TemplateProcessing> {
    let pick = |wanted: bool, token: &Option<String>, id: Option<u32>| match (wanted, token, id) {
        (true, Some(token), Some(id)) => Some((token.clone(), id)),
        _ => None,
    };
    let bos = pick(add_bos, &specials.tokens.bos, specials.bos);
    let eos = pick(add_eos, &specials.tokens.eos, specials.eos);
    let piece =
        |token: &Option<(String, u32)>, seq: u8| token.as_ref().map(|(t, _)| format!("{t}:{seq}"));
    let join =
        |pieces: Vec<Option<String>>| pieces.into_iter().flatten().collect::<Vec<_>>().join(" ");
    let single = join(vec![piece(&bos, 0), Some("$A:0".into()), piece(&eos, 0)]);
    let pair = join(vec![
        piece(&bos, 0),
        Some("$A:0".into()),
        piece(&eos, 0),
        piece(&bos, 1),
        Some("$B:1".into()),
        piece(&eos, 1),
    ]);
    TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(|e| anyhow!("{e}"))?
        .special_tokens(bos.into_iter().chain(eos).collect::<Vec<_>>())
        .build()
        .map_err(|e| anyhow!("{e}"))
}

/// The chat template of a Hugging Face directory and a description of where it was looked for.
fn hf_chat_template(dir: &Path, config: &serde_json::Value) -> Result<(Option<String>, String)> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let source =
            fs::read_to_string(&jinja).with_context(|| format!("reading {}", jinja.display()))?;
        return Ok((Some(source), jinja.display().to_string()));
    }
    let json = dir.join("chat_template.json");
    if json.is_file() {
        let name = json.display().to_string();
        let text = fs::read_to_string(&json).with_context(|| format!("reading {name}"))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{name}: invalid JSON"))?;
        let source = value
            .get("chat_template")
            .and_then(|t| t.as_str())
            .ok_or_else(|| anyhow!("{name}: field 'chat_template' is missing or not a string"))?;
        return Ok((Some(source.to_string()), name));
    }
    let config_name = format!(
        "{}: field 'chat_template'",
        dir.join("tokenizer_config.json").display()
    );
    let source = match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        // Several named templates: transformers uses the one called "default".
        Some(serde_json::Value::Array(templates)) => templates
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string),
        Some(other) => {
            bail!("{config_name} is {other}, expected a string or a list of named templates")
        }
    };
    Ok((source, config_name))
}

fn compile_template(
    source: Option<String>,
    tokens: &SpecialTokens,
    origin: impl FnOnce() -> String,
) -> std::result::Result<ChatTemplate, String> {
    let Some(source) = source else {
        return Err(format!(
            "no chat template: {} is absent, so this model (a base model?) cannot format chats; \
             it can only continue plain text",
            origin()
        ));
    };
    ChatTemplate::new(source, tokens.clone())
        .map_err(|e| format!("{}: invalid chat template: {e}", origin()))
}
