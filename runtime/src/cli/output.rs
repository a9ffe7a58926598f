//! The files `tc run` writes — `--save`, `--memory-json`, `--memory-svg` — as SPEC §3.7
//! says. `plan` resolves and checks every destination before the program runs, each error
//! naming its option (exit 1): a missing or unwritable folder, a folder where a file goes, a
//! name too long, `--save` in a form it does not take, an output safetensors cannot hold. A
//! destination that is also the program, an input, the params or another destination is
//! bad usage (exit 2). `-` is standard output; while a report goes there, tc's own messages
//! go to standard error. `Outputs::commit` writes them all after the run, or none.

use super::{console, CliError, RunArgs};
use crate::data::sink::{self, Content, Resolved, Sink};
use crate::data::{self, SaveLayout};
use crate::tensor::HostTensor;
use std::path::{Path, PathBuf};
use tc_compiler::report::MemoryReport;
use tc_compiler::Program;

/// One file to write: the option that asked for it, as the user wrote it, and where it goes.
#[derive(Debug)]
struct Destination {
    /// `--memory-json m.json`, or `--save out (out/y.npy)`: the option, as given.
    label: String,
    /// The path it stands for, for messages.
    path: PathBuf,
    resolved: Resolved,
}

/// What `--save` writes.
#[derive(Debug)]
enum Save {
    /// One `.npy` per output, in the outputs' order.
    Folder(Vec<Destination>),
    Safetensors(Destination),
}

/// Every destination of a run, checked; written by `commit`.
#[derive(Debug)]
pub struct Outputs {
    save: Option<Save>,
    json: Option<Destination>,
    svg: Option<Destination>,
}

/// `path` for a message, its end cut where it is very long (a 300-character output name).
fn clip(path: &Path) -> String {
    let shown = path.display().to_string();
    if shown.chars().count() <= 80 {
        shown
    } else {
        format!("{}…", shown.chars().take(60).collect::<String>())
    }
}

/// Resolves `path`, which `label` (`--memory-json m.json`) asked for.
fn destination(label: String, path: &Path) -> Result<Destination, CliError> {
    let resolved = sink::resolve(path)
        .map_err(|e| CliError::Program(format!("error: {label}: {e}; nothing was run")))?;
    Ok(Destination {
        label,
        path: path.to_path_buf(),
        resolved,
    })
}

/// Resolves and checks every destination of `args` for `program`'s outputs, before any
/// data is read or anything run.
pub fn plan(args: &RunArgs, program: &Program) -> Result<Outputs, CliError> {
    let names: Vec<&str> = program
        .plan
        .outputs
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    let save = match &args.save {
        None => None,
        Some(path) => {
            let shown = path.display();
            let layout = data::save_layout(path, &names).map_err(|e| {
                CliError::Program(format!("error: --save {shown}: {e}; nothing was run"))
            })?;
            Some(match layout {
                SaveLayout::Safetensors(file) => {
                    Save::Safetensors(destination(format!("--save {shown}"), &file)?)
                }
                SaveLayout::Folder(files) => Save::Folder(
                    files
                        .iter()
                        .map(|f| destination(format!("--save {shown} ({})", clip(f)), f))
                        .collect::<Result<_, CliError>>()?,
                ),
            })
        }
    };
    let mut sources: Vec<(String, &Path)> =
        vec![(format!("the program {}", args.file.display()), &args.file)];
    for (name, path) in &args.exec.inputs {
        sources.push((format!("--input {name}={}", path.display()), path));
    }
    if let Some(p) = &args.exec.params {
        sources.push((format!("--params {}", p.display()), p));
    }
    reports(
        save,
        args.memory_json.as_deref(),
        args.memory_svg.as_deref(),
        &sources,
    )
}

/// The destinations of `tc plan`: the report files only, checked against the program.
pub fn plan_reports(
    file: &Path,
    json: Option<&Path>,
    svg: Option<&Path>,
) -> Result<Outputs, CliError> {
    let sources = [(format!("the program {}", file.display()), file)];
    reports(None, json, svg, &sources)
}

/// Resolves the report destinations next to `save`'s and checks them all against each
/// other and against the files the command reads (`sources`).
fn reports(
    save: Option<Save>,
    json: Option<&Path>,
    svg: Option<&Path>,
    sources: &[(String, &Path)],
) -> Result<Outputs, CliError> {
    let json = json
        .map(|p| destination(format!("--memory-json {}", p.display()), p))
        .transpose()?;
    let svg = svg
        .map(|p| destination(format!("--memory-svg {}", p.display()), p))
        .transpose()?;
    let outputs = Outputs { save, json, svg };
    outputs.check_clashes(sources)?;
    // A report on standard output (`-`, or another name of the same pipe or file) keeps it
    // to itself; a terminal or /dev/null is shared, as everywhere.
    let stdout = sink::fd_identity(1);
    if outputs.all().iter().any(|d| {
        d.resolved.sink == Sink::Stdout
            || stdout
                .as_ref()
                .is_some_and(|s| d.resolved.identity.clashes_with(s))
    }) {
        console::give_stdout_to_a_report();
    }
    Ok(outputs)
}

impl Outputs {
    fn all(&self) -> Vec<&Destination> {
        let mut all: Vec<&Destination> = match &self.save {
            None => Vec::new(),
            Some(Save::Folder(files)) => files.iter().collect(),
            Some(Save::Safetensors(d)) => vec![d],
        };
        all.extend(self.json.iter().chain(&self.svg));
        all
    }

    /// No destination may be another destination, the program, an input or the params.
    fn check_clashes(&self, sources: &[(String, &Path)]) -> Result<(), CliError> {
        let all = self.all();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                if a.resolved.sink == Sink::Stdout && b.resolved.sink == Sink::Stdout {
                    return Err(CliError::Usage(format!(
                        "{} and {} both write to standard output; give one of them a file; \
                         nothing was run",
                        a.label, b.label
                    )));
                }
                if a.resolved.identity.clashes_with(&b.resolved.identity) {
                    return Err(CliError::Usage(format!(
                        "{} and {} are the same file; nothing was run",
                        a.label, b.label
                    )));
                }
            }
        }
        for (label, path) in sources {
            let Some(source) = sink::source_identity(path) else {
                continue;
            };
            if let Some(d) = all
                .iter()
                .find(|d| d.resolved.identity.clashes_with(&source))
            {
                return Err(CliError::Usage(format!(
                    "{} would overwrite {label}, which this run reads; nothing was run",
                    d.label
                )));
            }
        }
        Ok(())
    }

    /// Writes every destination after a successful run: the outputs (`outputs`, in the
    /// program's order) and the report. All or nothing; nothing at all if a message of the
    /// run could not be written to standard output.
    pub fn commit(
        &self,
        outputs: &[(String, HostTensor)],
        report: &MemoryReport,
    ) -> Result<(), CliError> {
        console::check_stdout()?;
        let st_bytes = match &self.save {
            Some(Save::Safetensors(d)) => Some(
                data::safetensors_bytes(&d.path, outputs)
                    .map_err(|e| CliError::Program(format!("error: {}: {e}", d.label)))?,
            ),
            _ => None,
        };
        let json = self
            .json
            .as_ref()
            .map(|_| tc_compiler::report::json::to_json(report));
        let svg = self
            .svg
            .as_ref()
            .map(|_| tc_compiler::report::svg::render_svg(report));
        let mut files: Vec<(&Destination, Content<'_>)> = Vec::new();
        match (&self.save, &st_bytes) {
            (Some(Save::Safetensors(d)), Some(bytes)) => files.push((d, Content::Bytes(bytes))),
            (Some(Save::Folder(ds)), _) => files.extend(
                ds.iter()
                    .zip(outputs)
                    .map(|(d, (_, t))| (d, Content::Npy(t))),
            ),
            _ => {}
        }
        if let (Some(d), Some(text)) = (&self.json, &json) {
            files.push((d, Content::Bytes(text.as_bytes())));
        }
        if let (Some(d), Some(text)) = (&self.svg, &svg) {
            files.push((d, Content::Bytes(text.as_bytes())));
        }
        let set: Vec<(&Sink, Content<'_>)> =
            files.iter().map(|(d, c)| (&d.resolved.sink, *c)).collect();
        sink::write_all(&set).map_err(|(i, e)| {
            let d = files[i].0;
            CliError::Program(format!(
                "error: {}: cannot write {}: {e}; no output was saved",
                d.label,
                match &d.resolved.sink {
                    Sink::Stdout => "standard output".to_string(),
                    _ => d.path.display().to_string(),
                }
            ))
        })
    }
}
