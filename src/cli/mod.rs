//! The command line: clap structs turned into plain library values. Nothing below this module
//! knows about flags.

mod args;
mod model;
mod persona;
mod screen;
mod serve;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "persona-train",
    version,
    about = "LoRA fine-tuning with persona-vector monitoring and steering"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Chat with a model: applies its chat template and prints only the reply.
    Generate(model::GenerateArgs),
    /// Runs raw text through a model and writes input ids, logits and all hidden states.
    Forward(model::ForwardArgs),
    /// Writes a persona vector as a llama.cpp control vector (GGUF).
    ExportCvec(persona::ExportCvecArgs),
    /// Reads a llama.cpp control vector into a persona-vector file.
    ImportCvec(persona::ImportCvecArgs),
    /// Extracts a trait's persona vector (difference of mean activations, every layer).
    Extract(persona::ExtractArgs),
    /// Generates a new trait's artifacts through an OpenAI-compatible chat API.
    Artifacts(persona::ArtifactsArgs),
    /// Steers at one layer at a time, judges the answers to the evaluation questions and
    /// recommends a layer.
    Sweep(persona::SweepArgs),
    /// Fine-tunes with LoRA as a recipe says (`persona-train RECIPE.toml` is the same).
    Train(train::TrainArgs),
    /// Evaluates a checkpoint or model: MMLU, judge-free trait metrics, judged trait scores,
    /// projection shift, as a recipe's [eval] table says.
    Eval(train::EvalArgs),
    /// Tables and plots of the evaluations of one or more runs.
    Report(train::ReportArgs),
    /// Folds a LoRA adapter into the base weights and writes a Hugging Face model directory.
    Merge(model::MergeArgs),
    /// Ranks training samples by projection difference (their answer vs the base model's own)
    /// on a persona vector, compares datasets and writes filtered ones.
    Screen(screen::ScreenArgs),
    /// Projects the last token of each prompt on persona vectors and alerts above a threshold,
    /// before any reply is generated.
    Monitor(screen::MonitorArgs),
    /// OpenAI-compatible HTTP server with continuous batching, per-request steering and
    /// persona monitoring.
    Serve(serve::ServeArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(a) => model::generate_reply(a),
        Command::Forward(a) => model::forward(a),
        Command::ExportCvec(a) => persona::export_cvec(a),
        Command::ImportCvec(a) => persona::import_cvec(a),
        Command::Extract(a) => persona::extract(a),
        Command::Artifacts(a) => persona::artifacts(a),
        Command::Sweep(a) => persona::sweep(a),
        Command::Train(a) => train::train(a),
        Command::Eval(a) => train::eval(a),
        Command::Report(a) => train::report(a),
        Command::Merge(a) => model::merge(a),
        Command::Screen(a) => screen::screen(a),
        Command::Monitor(a) => screen::monitor(a),
        Command::Serve(a) => serve::serve(a),
    }
}

/// Parses the command line; `persona-train RECIPE.toml ...` is read as `persona-train train
/// RECIPE.toml ...`.
pub fn parse_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Cli {
    let mut args: Vec<std::ffi::OsString> = args.into_iter().collect();
    if args
        .get(1)
        .is_some_and(|a| a.to_string_lossy().ends_with(".toml"))
    {
        args.insert(1, "train".into());
    }
    Cli::parse_from(args)
}
