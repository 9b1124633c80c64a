//! One training step on tiny-llama against transformers + PEFT (tests/fixtures/golden_training.py):
//! the loss and every LoRA gradient with each steering mode, rsLoRA scaling, and two clipped AdamW
//! steps; one step on each other family (Qwen3, Mistral, Gemma 2, Gemma 3); and the bf16 model
//! with PEFT's mixed precision (tests/fixtures/golden_bf16.py).

mod common;

use burn::tensor::{DType, Device, Tensor};
use common::{fixture, read_golden, rel_err, Golden};
use persona_train::data::Example;
use persona_train::lm::Lm;
use persona_train::loader::peft;
use persona_train::model::lora::{Adapters, LoraConfig, Target};
use persona_train::model::CausalLm;
use persona_train::model::Forward;
use persona_train::recipe::OptimConfig;
use persona_train::steering::{Positions, SteerLayers, Steering};
use persona_train::train::loss::{nll_sum, Batch};
use persona_train::train::optim::AdamW;
use persona_train::train::{optimizer_step, params, trainable};
use std::collections::HashMap;

const TOL: f64 = 1e-4;

fn setup() -> (Golden, CausalLm, Device) {
    setup_in(DType::F32)
}

fn setup_in(dtype: DType) -> (Golden, CausalLm, Device) {
    let g = read_golden(&fixture("training/golden.safetensors"));
    let device = common::device();
    let model =
        persona_train::loader::load_hf_model(&fixture("tiny-llama"), &device, dtype).unwrap();
    (g, model, device)
}

fn lora_config(rslora: bool) -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        rslora,
        dropout: 0.0,
        targets: Target::ALL.to_vec(),
    }
}

/// The golden initial adapters, as autodiff leaves.
fn init_adapters(g: &Golden, model: &CausalLm, rslora: bool, device: &Device) -> Adapters {
    init_adapters_with(g, model, rslora, device, &OptimConfig::default())
}

/// The same, made trainable as `optim` says (gradient checkpointing).
fn init_adapters_with(
    g: &Golden,
    model: &CausalLm,
    rslora: bool,
    device: &Device,
    optim: &OptimConfig,
) -> Adapters {
    let mut tensors: HashMap<String, (Vec<usize>, Vec<f32>)> = g
        .f32s
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("init.").map(|k| (k.to_string(), v.clone())))
        .collect();
    let adapters =
        peft::from_tensors(lora_config(rslora), model.config(), device, &mut tensors).unwrap();
    assert!(
        tensors.is_empty(),
        "unused golden tensors: {:?}",
        tensors.keys()
    );
    adapters.map(|_, _, _, t| trainable(t, optim))
}

/// The golden batch: rows of `input_ids` cut to their real length, targets where labels != -100.
fn examples(g: &Golden) -> Vec<Example> {
    let (shape, ids) = g.i64("input_ids");
    let (_, mask) = g.i64("attention_mask");
    let (_, labels) = g.i64("labels");
    let t = shape[1];
    (0..shape[0])
        .map(|r| {
            let len = mask[r * t..(r + 1) * t].iter().filter(|&&m| m == 1).count();
            Example {
                ids: ids[r * t..r * t + len].iter().map(|&i| i as u32).collect(),
                targets: labels[r * t..r * t + len]
                    .iter()
                    .map(|&l| l != -100)
                    .collect(),
                origin: format!("golden row {r}"),
            }
        })
        .collect()
}

/// PEFT orientation (`[r, in]`, `[out, r]`) of one of our matrices.
fn peft_layout(t: Tensor<2>) -> Vec<f32> {
    let [rows, cols] = t.dims();
    let v: Vec<f32> = t.into_data().convert::<f32>().try_into_vec().unwrap();
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

fn peft_keys(adapters: &Adapters) -> Vec<String> {
    adapters
        .iter()
        .flat_map(|(i, t, _)| [t.peft_key(i, "lora_A"), t.peft_key(i, "lora_B")])
        .collect()
}

fn check_case(case: &str, steering: Option<Steering>, rslora: bool) {
    check_case_with(case, steering, rslora, &OptimConfig::default());
}

fn check_case_with(case: &str, steering: Option<Steering>, rslora: bool, optim: &OptimConfig) {
    let (g, model, device) = setup();
    let adapters = init_adapters_with(&g, &model, rslora, &device, optim);
    check_step(
        "tiny-llama",
        case,
        (&g, &model),
        &adapters,
        steering.as_ref(),
    );
}

/// The loss and every gradient of one step of `case` against PEFT's in `golden`.
fn check_step(
    name: &str,
    case: &str,
    (g, model): (&Golden, &CausalLm),
    adapters: &Adapters,
    steering: Option<&Steering>,
) {
    let (got, grads) = golden_step(g, model, &model.device(), adapters, steering);
    let want = g.f32(&format!("{case}.loss")).1[0];
    let err = ((got - want) / want).abs() as f64;
    assert!(err < TOL, "{name} {case}: loss {got} vs PEFT {want}");
    let mut worst = 0.0f64;
    let count = grads.len();
    for (key, grad) in grads {
        let err = rel_err(&peft_layout(grad), &g.f32(&format!("{case}.grad.{key}")).1);
        assert!(err < TOL, "{name} {case}: gradient of {key}: rel err {err}");
        worst = worst.max(err);
    }
    println!(
        "{name} {case}: loss {got} (PEFT {want}, rel err {err:.1e}), worst gradient rel err {worst:.2e} over {count} matrices"
    );
}

/// One step on each other family's tiny model (tests/fixtures/training/tiny-*.safetensors):
/// the loss and every gradient equal PEFT's without steering and with all-layer steering. The
/// batch is longer than the Mistral and Gemma windows.
#[test]
fn step_on_every_family() {
    let device = common::device();
    for name in ["tiny-qwen3", "tiny-mistral", "tiny-gemma2", "tiny-gemma3"] {
        let g = read_golden(&fixture(&format!("training/{name}.safetensors")));
        let model =
            persona_train::loader::load_hf_model(&fixture(name), &device, DType::F32).unwrap();
        let adapters = init_adapters_with(&g, &model, false, &device, &OptimConfig::default());
        let c = model.config();
        let steering = Steering::new(
            &vector(&g),
            SteerLayers::All,
            2.0,
            Positions::All,
            c.num_layers,
            c.hidden_size,
        )
        .unwrap();
        check_step(name, "off", (&g, &model), &adapters, None);
        check_step(name, "all_layers", (&g, &model), &adapters, Some(&steering));
    }
}

/// One forward and backward pass on the golden batch: the mean loss over its targets and every
/// adapter matrix's gradient, under its PEFT key.
fn golden_step(
    g: &Golden,
    model: &CausalLm,
    device: &Device,
    adapters: &Adapters,
    steering: Option<&Steering>,
) -> (f32, Vec<(String, Tensor<2>)>) {
    let exs = examples(g);
    let batch = Batch::new(&exs.iter().collect::<Vec<_>>(), device);
    let lm = Lm::new(model)
        .with_adapters(Some(adapters))
        .with_steering(steering);
    let loss = nll_sum(lm, &batch).unwrap() / batch.num_targets() as f32;
    let grads = loss.backward();
    let gradients = peft_keys(adapters)
        .into_iter()
        .zip(params(adapters))
        .map(|(key, p)| {
            let grad = p
                .grad(&grads)
                .unwrap_or_else(|| panic!("no gradient for {key}"));
            (key, grad)
        })
        .collect();
    (loss.inner().into_scalar::<f32>(), gradients)
}

fn vector(g: &Golden) -> Vec<Vec<f32>> {
    let (shape, v) = g.f32("vector");
    v.chunks(shape[1]).map(<[f32]>::to_vec).collect()
}

fn steer(layers: SteerLayers, coef: f32, positions: Positions) -> Steering {
    let (g, _, _) = setup();
    Steering::new(&vector(&g), layers, coef, positions, 3, 64).unwrap()
}

fn ablate(layers: SteerLayers) -> Steering {
    let (g, _, _) = setup();
    Steering::ablate(&vector(&g), layers, Positions::All, 3, 64).unwrap()
}

#[test]
fn step_off() {
    check_case("off", None, false);
}

/// Balanced gradient checkpointing recomputes activations; the gradients stay PEFT's.
#[test]
fn step_all_layers_with_gradient_checkpointing() {
    let optim = OptimConfig {
        gradient_checkpointing: true,
        ..OptimConfig::default()
    };
    let steering = steer(SteerLayers::All, 2.0, Positions::All);
    check_case_with("all_layers", Some(steering), false, &optim);
}

#[test]
fn step_all_layers() {
    check_case(
        "all_layers",
        Some(steer(SteerLayers::All, 2.0, Positions::All)),
        false,
    );
}

#[test]
fn step_all_layers_response_only() {
    check_case(
        "all_layers_response",
        Some(steer(SteerLayers::All, 2.0, Positions::Response)),
        false,
    );
}

#[test]
fn step_single_layer() {
    check_case(
        "single_layer",
        Some(steer(SteerLayers::Single(2), 3.0, Positions::All)),
        false,
    );
}

#[test]
fn step_ablate_all_layers() {
    check_case("ablate", Some(ablate(SteerLayers::All)), false);
}

#[test]
fn step_ablate_single_layer() {
    check_case("ablate_single", Some(ablate(SteerLayers::Single(2))), false);
}

#[test]
fn step_rslora() {
    check_case("rslora", None, true);
}

/// Two AdamW steps with global-norm clipping equal torch.optim.AdamW + clip_grad_norm_.
#[test]
fn two_adamw_steps_match_torch() {
    let (g, model, device) = setup();
    let mut adapters = init_adapters(&g, &model, false, &device);
    let exs = examples(&g);
    let batch = Batch::new(&exs.iter().collect::<Vec<_>>(), &device);
    let cfg = OptimConfig {
        lr: 1e-3,
        weight_decay: 0.01,
        grad_clip: 0.5,
        ..OptimConfig::default()
    };
    let mut optimizer = AdamW::new(&params(&adapters), &cfg);
    for (name, norm_key) in [("adamw", "adamw.grad_norm"), ("adamw2", "adamw2.grad_norm")] {
        let step = optimizer_step(
            &model,
            None,
            adapters,
            std::slice::from_ref(&batch),
            &mut optimizer,
            cfg.lr,
        )
        .unwrap();
        let want_norm = g.f32(norm_key).1[0] as f64;
        assert!(
            ((step.grad_norm - want_norm) / want_norm).abs() < TOL,
            "{name}: grad norm {} vs torch {want_norm}",
            step.grad_norm
        );
        adapters = step.adapters;
        for (key, p) in peft_keys(&adapters).iter().zip(params(&adapters)) {
            let err = rel_err(&peft_layout(p.inner()), &g.f32(&format!("{name}.{key}")).1);
            assert!(err < TOL, "{name}: {key} after the update: rel err {err}");
        }
    }
}

/// Adapters saved by PEFT (`save_pretrained`) load and give PEFT's logits; ours saved back
/// carry the same tensors under the same names.
#[test]
fn peft_adapters_load_and_match_peft_logits() {
    let device = common::device();
    let model =
        persona_train::loader::load_hf_model(&fixture("tiny-llama"), &device, DType::F32).unwrap();
    for name in ["peft-adapter", "peft-adapter-rslora"] {
        let dir = fixture(name);
        let adapters = peft::load(&dir, model.config(), &device).unwrap();
        let g = read_golden(&dir.join("golden.safetensors"));
        let ids: Vec<u32> = g.i64("input_ids").1.iter().map(|&i| i as u32).collect();
        let out = model
            .forward(
                &persona_train::model::ForwardInput::dense(&[ids], 0, &device),
                Forward {
                    adapters: Some(&adapters),
                    ..Forward::logits(persona_train::model::LogitsFor::All)
                },
            )
            .unwrap();
        let logits: Vec<f32> = out
            .logits
            .unwrap()
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .unwrap();
        let err = rel_err(&logits, &g.f32("logits").1);
        assert!(err < TOL, "{name}: logits rel err {err} against PEFT");

        let tmp = tempfile::tempdir().unwrap();
        peft::save(&adapters, tmp.path(), "tests/fixtures/tiny-llama").unwrap();
        let theirs = read_golden(&dir.join("adapter_model.safetensors"));
        let ours = read_golden(&tmp.path().join("adapter_model.safetensors"));
        assert_eq!(
            ours.f32s.keys().collect::<std::collections::BTreeSet<_>>(),
            theirs.f32s.keys().collect(),
            "{name}: tensor names differ from PEFT's"
        );
        for (k, (shape, v)) in &theirs.f32s {
            assert_eq!(&ours.f32(k).0, shape, "{name}: {k} shape");
            assert_eq!(&ours.f32(k).1, v, "{name}: {k} values");
        }
        let back = peft::load(tmp.path(), model.config(), &device).unwrap();
        assert_eq!(back.config, adapters.config);
    }
}

/// bf16 rounding differs between any two implementations, so a bf16 result is held to
/// transformers' own bf16 error `e` (its bf16 result against its f32 one): persona-train's bf16
/// result must be as close to the f32 reference (within `1.5 e`) and near transformers' bf16 one
/// (two results each about `e` from f32 are up to about `2 e` apart: within `2.5 e`).
fn check_bf16(what: &str, ours: &[f32], bf16: &[f32], f32_: &[f32]) -> (f64, f64, f64) {
    let scale = rel_err(bf16, f32_);
    let (vs_f32, vs_bf16) = (rel_err(ours, f32_), rel_err(ours, bf16));
    assert!(
        vs_f32 <= 1.5 * scale && vs_bf16 <= 2.5 * scale,
        "{what}: rel err {vs_f32:.2e} from f32 and {vs_bf16:.2e} from transformers' bf16, whose own error vs f32 is {scale:.2e}"
    );
    (vs_f32, vs_bf16, scale)
}

#[test]
fn bf16_forward_matches_transformers_bf16() {
    let (g, model, device) = setup_in(DType::BF16);
    let b16 = read_golden(&fixture("bf16/golden.safetensors"));
    let exs = examples(&g);
    let batch = Batch::new(&exs.iter().collect::<Vec<_>>(), &device);
    let out = model
        .forward(
            &batch.input,
            Forward {
                hidden_states: true,
                ..Forward::logits(persona_train::model::LogitsFor::All)
            },
        )
        .unwrap();
    let (_, mask) = g.i64("attention_mask");
    let real = |v: Vec<f32>, width: usize| -> Vec<f32> {
        v.chunks(width)
            .zip(mask.iter())
            .filter(|(_, &m)| m == 1)
            .flat_map(|(c, _)| c.to_vec())
            .collect()
    };
    let pick = |name: &str, width: usize| real(b16.f32(name).1.clone(), width);
    let logits = common::to_vec(out.logits.unwrap());
    let (err, _, scale) = check_bf16(
        "logits",
        &real(logits, 256),
        &pick("bf16.logits", 256),
        &pick("f32.logits", 256),
    );
    println!("bf16 logits: rel err {err:.2e} vs f32 (transformers' bf16: {scale:.2e})");
    for (i, h) in out.hidden_states.into_iter().enumerate() {
        let name = format!("hidden state {i}");
        let ours = real(common::to_vec(h), 64);
        let (err, _, scale) = check_bf16(
            &name,
            &ours,
            &pick(&format!("bf16.hidden.{i}"), 64),
            &pick(&format!("f32.hidden.{i}"), 64),
        );
        println!("bf16 {name}: rel err {err:.2e} vs f32 (transformers' bf16: {scale:.2e})");
    }
}

/// Base weights in bf16, adapters, gradients and loss in f32, as PEFT trains a bf16 model.
fn check_bf16_step(case: &str, steering: Option<Steering>) {
    let (g, model, device) = setup_in(DType::BF16);
    let b16 = read_golden(&fixture("bf16/golden.safetensors"));
    let adapters = init_adapters(&g, &model, false, &device);
    let (got, grads) = golden_step(&g, &model, &device, &adapters, steering.as_ref());
    let (want, want_f32) = (
        b16.f32(&format!("{case}.loss")).1[0],
        g.f32(&format!("{case}.loss")).1[0],
    );
    check_bf16(&format!("{case} loss"), &[got], &[want], &[want_f32]);
    // All 42 gradients as one vector: single small matrices are too noisy in bf16 to judge alone.
    let (mut ours, mut theirs, mut exact) = (Vec::new(), Vec::new(), Vec::new());
    for (key, grad) in grads {
        assert_eq!(grad.dtype(), DType::F32, "{case}: {key}");
        ours.extend(peft_layout(grad));
        theirs.extend_from_slice(&b16.f32(&format!("{case}.grad.{key}")).1);
        exact.extend_from_slice(&g.f32(&format!("{case}.grad.{key}")).1);
    }
    let (vs_f32, vs_bf16, scale) = check_bf16(&format!("{case} gradients"), &ours, &theirs, &exact);
    println!(
        "bf16 {case}: loss {got} (PEFT bf16 {want}, f32 {want_f32}); gradients rel err {vs_f32:.2e} vs f32, {vs_bf16:.2e} vs PEFT bf16 (PEFT's own bf16 vs f32: {scale:.2e})"
    );
}

#[test]
fn bf16_step_off_matches_peft_mixed_precision() {
    check_bf16_step("off", None);
}

#[test]
fn bf16_step_all_layers_matches_peft_mixed_precision() {
    check_bf16_step(
        "all_layers",
        Some(steer(SteerLayers::All, 2.0, Positions::All)),
    );
}
