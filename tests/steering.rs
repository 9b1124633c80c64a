//! Steering against transformers with forward hooks (`tests/fixtures/golden_steering.py`), and
//! steered generation with the KV cache against recomputing every step without it.

mod common;

use burn::tensor::{DType, Tensor, TensorData};
use common::{fixture, read_golden, rel_err, to_vec};
use persona_train::generate::Specials;
use persona_train::generate::{argmax, generate, Sampling};
use persona_train::lm::Lm;
use persona_train::loader::load_hf_model;
use persona_train::model::Forward;
use persona_train::model::{CausalLm, ForwardInput, LogitsFor};
use persona_train::steering::{Positions, SteerLayers, Steering};

fn setup() -> (CausalLm, common::Golden, Vec<Vec<f32>>) {
    let model = load_hf_model(&fixture("tiny-llama"), &common::device(), DType::F32).unwrap();
    let g = read_golden(&fixture("steering/golden.safetensors"));
    let (shape, flat) = g.f32("vector").clone();
    let vector = flat.chunks(shape[1]).map(<[f32]>::to_vec).collect();
    (model, g, vector)
}

fn meta(g: &common::Golden, key: &str) -> f32 {
    g.metadata[key].parse().unwrap()
}

fn check(case: &str, layers: SteerLayers, coef: f32, from: usize) {
    let (model, g, vector) = setup();
    let c = model.config();
    let steering = Steering::new(
        &vector,
        layers,
        coef,
        Positions::All,
        c.num_layers,
        c.hidden_size,
    )
    .unwrap();
    let ids: Vec<u32> = g.i64("input_ids").1.iter().map(|&i| i as u32).collect();
    let t = ids.len();
    let device = model.device();
    let mask = (from > 0).then(|| {
        let m: Vec<f32> = (0..t).map(|i| (i >= from) as u8 as f32).collect();
        Tensor::<2>::from_data(TensorData::new(m, [1, t]), &device)
    });
    let iv = steering.intervention(&device, mask);
    let out = model
        .forward(
            &ForwardInput::dense(&[ids], 0, &device),
            Forward {
                intervention: Some(&iv),
                hidden_states: true,
                ..Forward::logits(LogitsFor::All)
            },
        )
        .unwrap();
    let err = rel_err(
        &to_vec(out.logits.unwrap()),
        &g.f32(&format!("{case}.logits")).1,
    );
    assert!(err < 1e-4, "{case}: logits rel err {err}");
    let (shape, want) = g.f32(&format!("{case}.hidden_states"));
    let per = shape[1] * shape[2];
    for (l, h) in out.hidden_states.into_iter().enumerate() {
        let err = rel_err(&to_vec(h), &want[l * per..(l + 1) * per]);
        assert!(err < 1e-4, "{case}: hidden_states[{l}] rel err {err}");
    }
}

#[test]
fn single_layer_matches_hooks() {
    let g = read_golden(&fixture("steering/golden.safetensors"));
    check(
        "single",
        SteerLayers::Single(meta(&g, "layer") as usize),
        meta(&g, "coef_single"),
        0,
    );
}

#[test]
fn all_layers_incremental_matches_hooks() {
    let g = read_golden(&fixture("steering/golden.safetensors"));
    check("all", SteerLayers::All, meta(&g, "coef_all"), 0);
}

#[test]
fn position_mask_matches_hooks() {
    let g = read_golden(&fixture("steering/golden.safetensors"));
    let layer = meta(&g, "layer") as usize;
    check(
        "response",
        SteerLayers::Single(layer),
        meta(&g, "coef_single"),
        meta(&g, "response_from") as usize,
    );
}

/// Greedy steered decoding through the cache equals recomputing the whole sequence each step
/// with the same positions steered.
#[test]
fn steered_generation_with_cache_equals_without() {
    let (model, _, vector) = setup();
    let c = model.config().clone();
    let device = model.device();
    let prompt: Vec<u32> = vec![5, 17, 42, 99, 7, 63];
    let new = 8;
    for positions in [Positions::All, Positions::Prompt, Positions::Response] {
        for layers in [SteerLayers::Single(2), SteerLayers::All] {
            let steering =
                Steering::new(&vector, layers, 4.0, positions, c.num_layers, c.hidden_size)
                    .unwrap();
            let sampling = Sampling {
                max_new_tokens: new,
                ..Sampling::default()
            };
            let cached = generate(
                Lm::new(&model).with_steering(Some(&steering)),
                std::slice::from_ref(&prompt),
                &Specials::default(),
                &sampling,
            )
            .unwrap()
            .remove(0);

            let mut seq = prompt.clone();
            for _ in 0..new {
                let t = seq.len();
                let mask: Vec<f32> = (0..t)
                    .map(|i| match positions {
                        Positions::All => 1.0,
                        Positions::Prompt => (i < prompt.len()) as u8 as f32,
                        Positions::Response => (i + 1 >= prompt.len()) as u8 as f32,
                    })
                    .collect();
                let iv = steering.intervention(
                    &device,
                    Some(Tensor::from_data(TensorData::new(mask, [1, t]), &device)),
                );
                let out = model
                    .forward(
                        &ForwardInput::dense(&[seq.clone()], 0, &device),
                        Forward {
                            intervention: Some(&iv),
                            ..Forward::logits(LogitsFor::Last)
                        },
                    )
                    .unwrap();
                seq.push(argmax(&to_vec(out.logits.unwrap())));
            }
            assert_eq!(cached, seq[prompt.len()..], "{positions:?} {layers:?}");
        }
    }
    // Steering must change something, or the comparison above proves nothing.
    let plain = generate(
        Lm::new(&model),
        std::slice::from_ref(&prompt),
        &Specials::default(),
        &Sampling {
            max_new_tokens: new,
            ..Sampling::default()
        },
    )
    .unwrap();
    let strong = Steering::new(
        &vector,
        SteerLayers::All,
        8.0,
        Positions::All,
        c.num_layers,
        c.hidden_size,
    )
    .unwrap();
    let steered = generate(
        Lm::new(&model).with_steering(Some(&strong)),
        &[prompt],
        &Specials::default(),
        &Sampling {
            max_new_tokens: new,
            ..Sampling::default()
        },
    )
    .unwrap();
    assert_ne!(plain, steered);
}

#[test]
fn vector_of_the_wrong_size_is_an_error() {
    let (model, _, vector) = setup();
    let c = model.config();
    let err = Steering::new(
        &vector[1..],
        SteerLayers::All,
        1.0,
        Positions::All,
        c.num_layers,
        c.hidden_size,
    )
    .unwrap_err();
    assert!(err.to_string().contains("layers"), "{err}");
    let short: Vec<Vec<f32>> = vector.iter().map(|r| r[1..].to_vec()).collect();
    assert!(Steering::new(
        &short,
        SteerLayers::All,
        1.0,
        Positions::All,
        c.num_layers,
        c.hidden_size
    )
    .is_err());
    assert!(Steering::new(
        &vector,
        SteerLayers::Single(0),
        1.0,
        Positions::All,
        c.num_layers,
        c.hidden_size
    )
    .is_err());
    assert!(Steering::new(
        &vector,
        SteerLayers::Single(c.num_layers + 1),
        1.0,
        Positions::All,
        c.num_layers,
        c.hidden_size
    )
    .is_err());
}
