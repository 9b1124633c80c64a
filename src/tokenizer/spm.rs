//! SentencePiece vocabularies in GGUF files (`tokenizer.ggml.model = "llama"`): tokens, scores and
//! token types, `<0xNN>` byte-fallback tokens, no merges.
//!
//! transformers turns such a file into a BPE tokenizer with byte fallback whose merges it recovers
//! from the vocabulary (`generate_merges`), and picks the rest by architecture
//! (`integrations/gguf/gguf_tokenizer_mapping.py`): Gemma's (`GemmaTokenizer`: spaces become `▁`
//! by a normalizer, merges in the order the tokens are listed, runs of spaces respelled), Phi-3's
//! (the prefix `▁` from a normalizer) and Llama's (`LlamaTokenizer`: a `Metaspace` pre-tokenizer
//! that prefixes the first word, merges by score) for every other architecture. This builds the
//! same tokenizer.

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, SplitDelimiterBehavior};

use super::{optional, parse_merges, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED};
use crate::gguf::GgufFile;

/// SentencePiece's word-boundary mark, which stands for a space in every piece.
pub(super) const SPACE: char = '▁';

/// Which of transformers' SentencePiece builders a file gets, by `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Llama,
    Gemma,
    Phi3,
}

impl Flavour {
    fn of(architecture: &str) -> Self {
        match architecture {
            "gemma" | "gemma2" | "gemma3" => Self::Gemma,
            "phi3" => Self::Phi3,
            _ => Self::Llama,
        }
    }

    /// The special tokens transformers' tokenizer class registers by default (`GemmaTokenizer`,
    /// `LlamaTokenizer`), in `SPECIAL_TOKENS_ATTRIBUTES` order; one missing from the vocabulary
    /// gets a new id, as there.
    fn default_specials(self) -> &'static [&'static str] {
        match self {
            Self::Gemma => &["<bos>", "<eos>", "<unk>", "<pad>", "<mask>"],
            Self::Llama | Self::Phi3 => &["<s>", "</s>", "<unk>"],
        }
    }
}

/// The tokenizer of a SentencePiece GGUF vocabulary, with its control and user-defined tokens
/// added; the caller adds the named special tokens and the BOS/EOS post-processor.
pub(super) fn from_gguf(g: &GgufFile, tokens: &[&str]) -> Result<tokenizers::Tokenizer> {
    let path = g.path().display();
    let flavour = Flavour::of(g.architecture()?);
    let respelled: Vec<String> = tokens
        .iter()
        .map(|&t| match flavour {
            Flavour::Gemma => respell_spaces(t),
            _ => t.to_string(),
        })
        .collect();
    // Later duplicates win, as in the Python dict transformers builds.
    let vocab: Vocab = respelled
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();
    let merges = match optional(g, "tokenizer.ggml.merges", GgufFile::get_str_array)? {
        Some(merges) => {
            parse_merges(&merges).with_context(|| format!("{path}: tokenizer.ggml.merges"))?
        }
        None => recover_merges(&respelled, &vocab, &merge_order(g, flavour, tokens.len())?),
    };
    let mut bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if flavour == Flavour::Gemma {
        bpe = bpe.unk_token("<unk>".into());
    }
    let bpe = bpe
        .build()
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("{path}: building the tokenizer from tokenizer.ggml.tokens"))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    set_pipeline(&mut tokenizer, flavour)?;
    let token_types =
        optional(g, "tokenizer.ggml.token_type", GgufFile::get_i32_array)?.unwrap_or_default();
    add_tokens(&mut tokenizer, flavour, tokens, &token_types);
    Ok(tokenizer)
}

/// What orders the merges of a file without any: Gemma's scores do not follow its merge order
/// but its listing does; other files' scores do.
fn merge_order(g: &GgufFile, flavour: Flavour, n_tokens: usize) -> Result<MergeOrder> {
    if flavour == Flavour::Gemma {
        return Ok(MergeOrder::Listing);
    }
    let scores = g.get_f32_array("tokenizer.ggml.scores")?;
    if scores.len() != n_tokens {
        bail!(
            "{}: tokenizer.ggml.scores has {} entries for {n_tokens} tokens",
            g.path().display(),
            scores.len()
        );
    }
    Ok(MergeOrder::Scores(scores))
}

/// Gemma files store a token of two or more spaces with real spaces, where the tokenizer looks
/// for `▁`s: transformers respells every all-whitespace token holding a space as that many `▁`.
fn respell_spaces(token: &str) -> String {
    if token.contains(' ') && token.chars().all(is_python_space) {
        SPACE.to_string().repeat(token.chars().count())
    } else {
        token.to_string()
    }
}

/// Python's `str.isspace`: Unicode whitespace plus the information separators U+001C–U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The normalizer, pre-tokenizer and decoder of each builder.
fn set_pipeline(tokenizer: &mut tokenizers::Tokenizer, flavour: Flavour) -> Result<()> {
    let space_to_mark = || Replace::new(" ", SPACE.to_string()).map_err(|e| anyhow!("{e}"));
    let mut decoders: Vec<DecoderWrapper> = vec![
        DecoderWrapper::Replace(Replace::new(SPACE.to_string(), " ").map_err(|e| anyhow!("{e}"))?),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    match flavour {
        Flavour::Gemma => {
            tokenizer.with_normalizer(Some(space_to_mark()?));
            // A no-op after the normalizer (there are no spaces left), kept because it is there.
            let split = Split::new(
                SplitPattern::String(" ".into()),
                SplitDelimiterBehavior::MergedWithPrevious,
                false,
            )
            .map_err(|e| anyhow!("{e}"))?;
            tokenizer.with_pre_tokenizer(Some(split));
        }
        Flavour::Phi3 => {
            let normalizer = tokenizers::normalizers::Sequence::new(vec![
                NormalizerWrapper::Prepend(Prepend::new(SPACE.to_string())),
                NormalizerWrapper::Replace(space_to_mark()?),
            ]);
            tokenizer.with_normalizer(Some(normalizer));
            decoders.push(Strip::new(' ', 1, 0).into());
        }
        Flavour::Llama => {
            tokenizer.with_pre_tokenizer(Some(Metaspace::new(SPACE, PrependScheme::First, false)));
            decoders.push(Strip::new(' ', 1, 0).into());
        }
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(())
}

/// The class's default special tokens, then the file's control tokens as special tokens and its
/// user-defined ones (those the vocabulary spells as the file does) as plain added tokens, all
/// matched whole in text before normalization.
fn add_tokens(
    tokenizer: &mut tokenizers::Tokenizer,
    flavour: Flavour,
    tokens: &[&str],
    token_types: &[i32],
) {
    let special = |t: &str| AddedToken::from(t, true).normalized(false);
    let defaults: Vec<AddedToken> = flavour
        .default_specials()
        .iter()
        .map(|t| special(t))
        .collect();
    tokenizer.add_special_tokens(&defaults);
    let of_type = |wanted: i32| {
        tokens
            .iter()
            .zip(token_types)
            .filter(move |&(_, &ty)| ty == wanted)
            .map(|(t, _)| *t)
    };
    let control: Vec<AddedToken> = of_type(TOKEN_TYPE_CONTROL).map(special).collect();
    tokenizer.add_special_tokens(&control);
    let user_defined: Vec<AddedToken> = of_type(TOKEN_TYPE_USER_DEFINED)
        .filter(|t| tokenizer.token_to_id(t).is_some())
        .map(|t| AddedToken::from(t, false).normalized(false))
        .collect();
    tokenizer.add_tokens(&user_defined);
}

/// What orders the merges recovered from a vocabulary.
enum MergeOrder {
    /// The tokens' scores, highest first (SentencePiece's own order).
    Scores(Vec<f32>),
    /// The order the tokens are listed in, first first.
    Listing,
}

/// The merges a vocabulary implies, as transformers' `generate_merges` finds them: every split of
/// every token into two tokens of the vocabulary, ordered by the merged token's score (best
/// first), then by the lengths in characters of the left and right parts (longest first), ties
/// kept in the order found (tokens in first-listed order, a token's splits by the parts' ids).
///
/// `tokens` are the vocabulary's keys in listed order and `vocab` maps each to its (last) id.
fn recover_merges(tokens: &[String], vocab: &Vocab, order: &MergeOrder) -> Vec<(String, String)> {
    struct Candidate<'a> {
        score: f64,
        left_chars: usize,
        right_chars: usize,
        ids: (u32, u32),
        left: &'a str,
        right: &'a str,
    }
    // Only a vocabulary with repeated tokens needs to skip later listings.
    let mut seen = (vocab.len() != tokens.len()).then(std::collections::HashSet::new);
    let mut found: Vec<Candidate> = Vec::new();
    for token in tokens {
        if let Some(seen) = &mut seen {
            if !seen.insert(token.as_str()) {
                continue;
            }
        }
        // A repeated token takes the score of its last listing, as a Python dict keeps the last value.
        let id = vocab[token.as_str()];
        let score = match order {
            MergeOrder::Scores(scores) => f64::from(scores[id as usize]),
            MergeOrder::Listing => -f64::from(id),
        };
        let total_chars = token.chars().count();
        let start = found.len();
        for (k, (at, _)) in token.char_indices().skip(1).enumerate() {
            let (left, right) = token.split_at(at);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                found.push(Candidate {
                    score,
                    left_chars: k + 1,
                    right_chars: total_chars - k - 1,
                    ids: (l, r),
                    left,
                    right,
                });
            }
        }
        found[start..].sort_by_key(|c| c.ids);
    }
    // Python's sort(reverse=True) is stable, so equal keys keep the order found: the position
    // breaks ties here, which lets the faster unstable sort give the same order.
    let mut order: Vec<u32> = (0..found.len() as u32).collect();
    order.sort_unstable_by(|&i, &j| {
        let (a, b) = (&found[i as usize], &found[j as usize]);
        // partial_cmp: -0.0 and 0.0 tie, as in Python.
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
            .then(i.cmp(&j))
    });
    order
        .into_iter()
        .map(|i| {
            let c = &found[i as usize];
            (c.left.to_string(), c.right.to_string())
        })
        .collect()
}

/// The bytes one SentencePiece token stands for: `<0xNN>` is the byte NN, `▁` a space, any other
/// character its UTF-8.
pub(super) fn token_bytes(token: &str) -> Vec<u8> {
    let byte = token
        .strip_prefix("<0x")
        .and_then(|t| t.strip_suffix('>'))
        .filter(|hex| hex.len() == 2)
        .and_then(|hex| u8::from_str_radix(hex, 16).ok());
    match byte {
        Some(b) => vec![b],
        None => token.replace(SPACE, " ").into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(tokens: &[&str]) -> (Vec<String>, Vocab) {
        let tokens: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
        let vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        (tokens, vocab)
    }

    #[test]
    fn merges_follow_scores_then_part_lengths() {
        let (tokens, v) = vocab(&["a", "b", "c", "ab", "bc", "abc"]);
        let scores = MergeOrder::Scores(vec![0.0, 0.0, 0.0, -1.0, -2.0, -0.5]);
        let merges = recover_merges(&tokens, &v, &scores);
        let pairs: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        // "abc" (score -0.5) splits as a+bc and ab+c: the longer left part first.
        assert_eq!(pairs, [("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")]);
        let listed = recover_merges(&tokens, &v, &MergeOrder::Listing);
        assert_eq!(listed[0], ("a".into(), "b".into()));
        assert_eq!(listed.last().unwrap(), &("a".into(), "bc".into()));
    }

    #[test]
    fn gemma_space_runs_are_respelled() {
        assert_eq!(respell_spaces("   "), "▁▁▁");
        assert_eq!(respell_spaces(" \n"), "▁▁");
        assert_eq!(respell_spaces("\n\n"), "\n\n");
        assert_eq!(respell_spaces("a b"), "a b");
    }

    #[test]
    fn token_bytes_of_pieces() {
        assert_eq!(token_bytes("<0x0A>"), b"\n");
        assert_eq!(token_bytes("<0xE2>"), [0xE2]);
        assert_eq!(token_bytes("▁hello"), b" hello");
        assert_eq!(token_bytes("<0x>"), b"<0x>");
    }
}
