//! Our TensorBoard event files: written, read back by our reader and (when Python's `tensorboard`
//! package is installed; required in CI) by TensorBoard's own `EventAccumulator`.

mod common;

use persona_train::tensorboard::{read_dir_scalars, read_scalars, EventWriter};
use std::collections::BTreeMap;

#[test]
fn scalars_roundtrip_through_our_reader_and_tensorboard() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("run");
    let mut expected: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();

    let mut w = EventWriter::create(&logdir).unwrap();
    assert!(w.path().starts_with(&logdir));
    for step in 0..25i64 {
        let loss = 3.0 / (1.0 + step as f64) + 0.01 * (step as f64).sin();
        w.scalar("train/loss", step, loss).unwrap();
        expected
            .entry("train/loss".into())
            .or_default()
            .push((step, loss as f32 as f64));
        if step % 5 == 4 {
            let values = vec![
                ("eval/loss".to_string(), loss * 1.1),
                ("persona/evil".to_string(), -0.25 * step as f64),
                ("lr".to_string(), 1e-4 * 0.9f64.powi(step as i32)),
            ];
            w.scalars(step, &values).unwrap();
            for (tag, v) in values {
                expected
                    .entry(tag)
                    .or_default()
                    .push((step, v as f32 as f64));
            }
        }
    }
    // Large steps survive (varint beyond 32 bits).
    w.scalar("train/loss", 5_000_000_000, 0.5).unwrap();
    expected
        .get_mut("train/loss")
        .unwrap()
        .push((5_000_000_000, 0.5));

    // Our reader, on the file and on the directory (the writer has flushed everything).
    let mut ours: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for s in read_scalars(w.path()).unwrap() {
        ours.entry(s.tag).or_default().push((s.step, s.value));
    }
    assert_eq!(ours, expected);
    assert_eq!(
        read_dir_scalars(&logdir).unwrap(),
        read_scalars(w.path()).unwrap()
    );

    // TensorBoard itself, while the writer is still open (as it would watch a live run).
    if let Some(theirs) = common::python_tensorboard_scalars(&logdir) {
        assert_eq!(theirs, expected, "TensorBoard reads different scalars");
        eprintln!(
            "python tensorboard read {} tags, {} scalars: identical",
            theirs.len(),
            theirs.values().map(Vec::len).sum::<usize>()
        );
    }
}
