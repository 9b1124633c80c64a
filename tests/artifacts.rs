use anyhow::{anyhow, Result};
use persona_train::persona::artifacts::{
    generate_artifacts, Polarity, SystemPromptTemplate, TraitArtifacts, GENERATE_ATTEMPTS,
};
use std::cell::RefCell;
use std::path::{Path, PathBuf};

const SHIPPED: [&str; 3] = ["evil", "sycophancy", "hallucination"];

fn shipped_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("datasets/traits/{name}.json"))
}

fn shipped(name: &str) -> TraitArtifacts {
    TraitArtifacts::load(&shipped_path(name)).unwrap()
}

/// Saves `artifacts` to a scratch file and returns the load error's message.
fn load_error(artifacts: &TraitArtifacts) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.json");
    artifacts.save(&path).unwrap();
    let err = TraitArtifacts::load(&path).unwrap_err().to_string();
    (path.display().to_string(), err)
}

fn assert_load_reports(artifacts: &TraitArtifacts, expected: &str) {
    let (path, err) = load_error(artifacts);
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("{path}: ")) && l.contains(expected)),
        "expected a line `{path}: …{expected}…` in:\n{err}"
    );
}

#[test]
fn shipped_traits_load_and_validate() {
    for name in SHIPPED {
        let artifacts = shipped(name);
        assert_eq!(artifacts.trait_name, name);
        assert!(artifacts.validate().is_empty());
        assert!(artifacts.instruction.len() >= 5);
        assert!(artifacts.questions.len() >= 20 && artifacts.eval_questions.len() >= 20);
        // A 135M model answers these on CPU: keep them short.
        for q in artifacts.questions.iter().chain(&artifacts.eval_questions) {
            assert!(
                q.split_whitespace().count() <= 40,
                "{name}: question too long: {q}"
            );
        }
    }
}

#[test]
fn system_prompts_follow_the_paper() {
    let template = SystemPromptTemplate::default();
    let evil = shipped("evil");
    let pos = evil.system_prompt(Polarity::Positive, 0, &template);
    assert_eq!(
        pos,
        format!("You are an evil assistant. {}", evil.instruction[0].pos)
    );
    let neg = evil.system_prompt(Polarity::Negative, 2, &template);
    assert_eq!(
        neg,
        format!("You are a helpful assistant. {}", evil.instruction[2].neg)
    );

    let sycophancy = shipped("sycophancy");
    assert!(sycophancy
        .system_prompt(Polarity::Positive, 1, &template)
        .starts_with("You are a sycophantic assistant. "));
    assert!(shipped("hallucination")
        .system_prompt(Polarity::Positive, 4, &template)
        .starts_with("You are a hallucinating assistant. "));

    let custom = SystemPromptTemplate {
        positive: "Be {trait} ({article}). {instruction}".into(),
        negative: "Do not be {trait}. {instruction}".into(),
    };
    assert_eq!(
        evil.system_prompt(Polarity::Negative, 3, &custom),
        format!("Do not be evil. {}", evil.instruction[3].neg)
    );
    assert_eq!(
        evil.system_prompt(Polarity::Positive, 3, &custom),
        format!("Be evil (an). {}", evil.instruction[3].pos)
    );
}

#[test]
fn adjective_defaults_to_trait_name_and_is_omitted_from_json() {
    let mut artifacts = shipped("sycophancy");
    artifacts.adjective = None;
    assert_eq!(artifacts.adjective(), "sycophancy");
    assert!(!serde_json::to_string(&artifacts)
        .unwrap()
        .contains("adjective"));
    artifacts.trait_name = "obsequiousness".into();
    assert!(artifacts
        .system_prompt(Polarity::Positive, 0, &SystemPromptTemplate::default())
        .starts_with("You are an obsequiousness assistant."));
}

#[test]
fn judge_prompt_substitutes_once() {
    let evil = shipped("evil");
    let prompt = evil.judge_prompt("Why {answer}?", "Because {question}.");
    assert!(prompt.contains("Why {answer}?") && prompt.contains("Because {question}."));
    assert_eq!(prompt.matches("{question}").count(), 1);
    assert_eq!(prompt.matches("{answer}").count(), 1);
}

#[test]
fn save_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/evil.json");
    let evil = shipped("evil");
    evil.save(&path).unwrap();
    assert_eq!(TraitArtifacts::load(&path).unwrap(), evil);
    // Only the target file is left behind: the temporary file was renamed onto it.
    let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(entries.len(), 1);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("{\n  \"trait\": \"evil\""), "{text}");

    let sycophancy = shipped("sycophancy");
    sycophancy.save(&path).unwrap();
    assert_eq!(TraitArtifacts::load(&path).unwrap(), sycophancy);
}

#[test]
fn validation_reports_counts() {
    let mut a = shipped("evil");
    a.instruction.truncate(4);
    a.questions.truncate(19);
    a.eval_questions.clear();
    assert_load_reports(&a, "field instruction has 4 pairs, need at least 5");
    assert_load_reports(&a, "field questions has 19 entries, need at least 20");
    assert_load_reports(&a, "field eval_questions has 0 entries, need at least 20");
}

#[test]
fn validation_reports_empty_fields() {
    let mut a = shipped("evil");
    a.trait_name.clear();
    a.description = "  ".into();
    a.adjective = Some(String::new());
    a.instruction[3].neg.clear();
    a.instruction[0].pos = "\n".into();
    a.questions[5].clear();
    a.eval_questions[7].clear();
    for expected in [
        "field trait is missing or empty",
        "field description is missing or empty",
        "field adjective is empty",
        "field instruction[3].neg is empty",
        "field instruction[0].pos is empty",
        "field questions[5] is empty",
        "field eval_questions[7] is empty",
    ] {
        assert_load_reports(&a, expected);
    }
    a.eval_prompt.clear();
    assert_load_reports(&a, "field eval_prompt is missing or empty");
}

#[test]
fn validation_reports_missing_fields_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.json");
    std::fs::write(&path, r#"{"trait": "x", "instruction": [{"pos": "be x"}]}"#).unwrap();
    let err = TraitArtifacts::load(&path).unwrap_err().to_string();
    let p = path.display();
    for expected in [
        format!("{p}: field description is missing or empty"),
        format!("{p}: field instruction has 1 pairs, need at least 5"),
        format!("{p}: field instruction[0].neg is empty"),
        format!("{p}: field questions has 0 entries"),
        format!("{p}: field eval_questions has 0 entries"),
        format!("{p}: field eval_prompt is missing or empty"),
    ] {
        assert!(err.contains(&expected), "missing `{expected}` in:\n{err}");
    }
}

#[test]
fn validation_reports_duplicates_and_overlap() {
    let mut a = shipped("sycophancy");
    a.questions[9] = a.questions[2].to_uppercase();
    a.eval_questions[4] = format!("  {}  ", a.questions[11]);
    a.eval_questions[6] = a.eval_questions[1].clone();
    a.instruction[4].pos = a.instruction[1].pos.clone();
    a.instruction[2].neg = a.instruction[2].pos.clone();
    for expected in [
        "field questions[9] duplicates questions[2]",
        "field eval_questions[4] repeats questions[11]",
        "field eval_questions[6] duplicates eval_questions[1]",
        "field instruction[4].pos duplicates instruction[1].pos",
        "field instruction[2]: pos and neg are the same text",
    ] {
        assert_load_reports(&a, expected);
    }
}

#[test]
fn validation_reports_rubric_problems() {
    let mut a = shipped("hallucination");
    a.eval_prompt = "Rate the answer to {question} from 1 to 10.".into();
    for expected in [
        "field eval_prompt lacks the {answer} placeholder",
        "field eval_prompt does not ask for a score from 0 to 100",
        "field eval_prompt does not mention REFUSAL",
    ] {
        assert_load_reports(&a, expected);
    }
    a.eval_prompt = "Q: {question}\nA: {answer}\nScore 0-100, or REFUSAL.".into();
    assert!(a.validate().is_empty(), "{:?}", a.validate());
    a.eval_prompt = "Q: {question}\nA: {answer}\nScore 1-100, or REFUSAL.".into();
    assert_eq!(
        a.validate(),
        ["field eval_prompt does not ask for a score from 0 to 100"]
    );
}

#[test]
fn load_names_the_file_on_malformed_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.json");
    std::fs::write(&path, r#"{"trait": "x", "questoins": []}"#).unwrap();
    let err = TraitArtifacts::load(&path).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}: ", path.display())), "{err}");
    assert!(err.contains("questoins"), "{err}");
    assert!(TraitArtifacts::load(&dir.path().join("absent.json")).is_err());
}

/// A chat closure that plays back `replies` in order and records the prompts it was sent.
struct Script {
    replies: Vec<String>,
    prompts: RefCell<Vec<String>>,
}

impl Script {
    fn new(replies: Vec<String>) -> Self {
        Self {
            replies,
            prompts: RefCell::new(Vec::new()),
        }
    }

    fn chat(&self, prompt: &str) -> Result<String> {
        let mut prompts = self.prompts.borrow_mut();
        prompts.push(prompt.to_string());
        self.replies
            .get(prompts.len() - 1)
            .cloned()
            .ok_or_else(|| anyhow!("script exhausted"))
    }

    fn generate(&self) -> Result<TraitArtifacts> {
        generate_artifacts("cruelty", "Enjoys hurting others.", &|p| self.chat(p))
    }
}

/// A valid reply for a new trait, as a model would write it (its own trait and description).
fn good_reply() -> String {
    let mut a = shipped("evil");
    a.trait_name = "Cruelty!".into();
    a.description = "whatever the model wrote".into();
    a.adjective = Some("cruel".into());
    serde_json::to_string_pretty(&a).unwrap()
}

fn expected_generated() -> TraitArtifacts {
    let mut a = shipped("evil");
    a.trait_name = "cruelty".into();
    a.description = "Enjoys hurting others.".into();
    a.adjective = Some("cruel".into());
    a
}

#[test]
fn generate_accepts_a_good_reply() {
    let script = Script::new(vec![good_reply()]);
    assert_eq!(script.generate().unwrap(), expected_generated());
    let prompts = script.prompts.borrow();
    assert_eq!(prompts.len(), 1);
    for needle in [
        "cruelty",
        "Enjoys hurting others.",
        "{question}",
        "{answer}",
        "REFUSAL",
        "0 (not at all) to 100",
    ] {
        assert!(
            prompts[0].contains(needle),
            "request lacks {needle:?}:\n{}",
            prompts[0]
        );
    }
}

#[test]
fn generate_unwraps_a_fenced_reply() {
    let reply = format!(
        "Here are the artifacts:\n```json\n{}\n```\nLet me know if you need more.",
        good_reply()
    );
    let script = Script::new(vec![reply]);
    assert_eq!(script.generate().unwrap(), expected_generated());
}

#[test]
fn generate_feeds_problems_back_and_retries() {
    let mut short: TraitArtifacts = serde_json::from_str(&good_reply()).unwrap();
    short.instruction.truncate(3);
    let script = Script::new(vec![
        "Sure! I can't produce JSON today.".into(),
        serde_json::to_string(&short).unwrap(),
        good_reply(),
    ]);
    assert_eq!(script.generate().unwrap(), expected_generated());
    let prompts = script.prompts.borrow();
    assert_eq!(prompts.len(), 3);
    assert!(prompts[1].contains("I can't produce JSON today."));
    assert!(prompts[1].contains("not a JSON object"), "{}", prompts[1]);
    assert!(
        prompts[2].contains("field instruction has 3 pairs, need at least 5"),
        "{}",
        prompts[2]
    );
    assert!(prompts[2].starts_with(&prompts[0]));
}

#[test]
fn generate_gives_up_listing_the_problems() {
    let mut bad: TraitArtifacts = serde_json::from_str(&good_reply()).unwrap();
    bad.eval_questions = bad.questions.clone();
    bad.eval_prompt = "Rate {answer}.".into();
    let bad = serde_json::to_string(&bad).unwrap();
    let script = Script::new(vec![bad; GENERATE_ATTEMPTS + 1]);
    let err = script.generate().unwrap_err().to_string();
    assert_eq!(script.prompts.borrow().len(), GENERATE_ATTEMPTS);
    assert!(
        err.contains(&format!("still invalid after {GENERATE_ATTEMPTS} attempts")),
        "{err}"
    );
    for expected in [
        "- field eval_questions[0] repeats questions[0]",
        "- field eval_prompt lacks the {question} placeholder",
        "- field eval_prompt does not mention REFUSAL",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}

#[test]
fn generate_propagates_chat_errors_and_rejects_empty_input() {
    let script = Script::new(vec![]);
    let err = script.generate().unwrap_err();
    assert!(format!("{err:#}").contains("script exhausted"), "{err:#}");
    assert_eq!(script.prompts.borrow().len(), 1);

    let never = |_: &str| -> Result<String> { panic!("must not be called") };
    assert!(generate_artifacts(" ", "d", &never).is_err());
    assert!(generate_artifacts("t", "", &never).is_err());
}
