//! Persona vectors end to end on the default model: extraction with the local judge, then
//! steering along the vector moves the projection of the answers it produces.

use burn::tensor::{DType, Device};
use persona_train::generate::Specials;
use persona_train::generate::{generate, Sampling};
use persona_train::judge::local::LocalJudge;
use persona_train::lm::Lm;
use persona_train::loader::{load, LoadedModel};
use persona_train::persona::activations::activation_averages;
use persona_train::persona::artifacts::TraitArtifacts;
use persona_train::persona::extract::{extract, ExtractConfig};
use persona_train::persona::vector::{project, PersonaVector};
use persona_train::steering::{Positions, SteerLayers, Steering};
use persona_train::tokenizer::ChatMessage;
use std::path::Path;

fn smollm2() -> LoadedModel {
    load(
        &persona_train::source::resolve_default().unwrap(),
        &Device::flex(),
        DType::F32,
    )
    .unwrap()
}

/// Mean response-average projection on v[layer] of greedy answers, measured without steering.
fn answer_projection(
    m: &LoadedModel,
    questions: &[String],
    v: &[Vec<f32>],
    layer: usize,
    steer: Option<&Steering>,
) -> f32 {
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| {
            m.tokenizer
                .encode_chat(&[ChatMessage::new("user", q)], true)
                .unwrap()
                .ids
        })
        .collect();
    let sampling = Sampling {
        max_new_tokens: 24,
        ..Sampling::default()
    };
    let answers = generate(
        Lm::new(&m.model).with_steering(steer),
        &prompts,
        &Specials::of(&m.tokenizer),
        &sampling,
    )
    .unwrap();
    let mut total = 0.0;
    for (q, a) in questions.iter().zip(answers) {
        let answer = m.tokenizer.decode(&a, true).unwrap();
        let chat = [
            ChatMessage::new("user", q),
            ChatMessage::new("assistant", &answer),
        ];
        let enc = m.tokenizer.encode_chat(&chat, false).unwrap();
        let acts = activation_averages(
            Lm::new(&m.model),
            &enc.ids,
            enc.response_start.unwrap()..enc.response_end.unwrap(),
        )
        .unwrap();
        total += project(&acts["response_avg"][layer], &v[layer]);
    }
    total / questions.len() as f32
}

#[test]
fn extract_with_local_judge_then_steering_moves_the_projection() {
    let m = smollm2();
    let mut artifacts = TraitArtifacts::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/traits/sycophancy.json"),
    )
    .unwrap();
    artifacts.questions.truncate(2);
    artifacts.instruction.truncate(2);
    let judge = {
        let j = smollm2();
        LocalJudge::new(j.model, j.tokenizer, "default").unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sycophancy.safetensors");
    // A 135M judge rarely gives usable scores, so the filter is off; judging still runs.
    let mut cfg = ExtractConfig {
        no_filter: true,
        ..ExtractConfig::default()
    };
    cfg.sampling.max_new_tokens = 24;
    let summary = extract(&m, "default", &artifacts, Some(&judge), &cfg, &out).unwrap();
    assert_eq!(summary.kept, 4);

    let v = PersonaVector::load(&out).unwrap();
    let c = m.model.config();
    let rows = v
        .get("response_avg", c.num_layers, c.hidden_size)
        .unwrap()
        .to_vec();
    assert_eq!(v.metadata["judge"], "local:default");
    assert!(rows.iter().flatten().all(|x| x.is_finite()));

    let layer = 20;
    let questions = &artifacts.eval_questions[..3];
    let steer = |coef| {
        Steering::new(
            &rows,
            SteerLayers::Single(layer),
            coef,
            Positions::Response,
            c.num_layers,
            c.hidden_size,
        )
        .unwrap()
    };
    let base = answer_projection(&m, questions, &rows, layer, None);
    let up = answer_projection(&m, questions, &rows, layer, Some(&steer(COEF)));
    let down = answer_projection(&m, questions, &rows, layer, Some(&steer(-COEF)));
    eprintln!("projection at layer {layer}: -{COEF}: {down:.3}, 0: {base:.3}, +{COEF}: {up:.3}");
    assert!(up > base && base > down, "-: {down}, 0: {base}, +: {up}");
}

const COEF: f32 = 4.0;
