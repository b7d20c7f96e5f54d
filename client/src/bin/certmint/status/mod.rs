//! `certmint status`: are the key, certificate and CA files on disk usable
//! for mutual TLS, and is the certificate revoked? Reads them (from the
//! agent's output directory or from explicit paths, with the agent's
//! `crl.pem`), runs the layered check in [`inspect`], and prints one line
//! per layer (`ok`, `warn`, `FAIL`, `skip`), one line per CRL, the
//! certificate's serial and the verdict, or, with `--json`, the report as
//! JSON.
//!
//! Exit: [`Exit::Ok`] when no layer fails, [`Exit::NotUsable`] when one
//! does, [`Exit::Usage`] for bad arguments. Reads only; never writes or
//! prints key material.

mod inspect;

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::exit::Exit;
use inspect::{CrlInput, FileInput, Inputs, MetaInput, Report, Role};

/// `certmint status` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent's output directory (key.pem, cert.pem, ca.pem and
    /// meta.json, read from the generation `..data` points at).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["key", "cert", "ca"])]
    dir: Option<PathBuf>,
    /// The private key (PEM), instead of --dir.
    #[arg(long, value_name = "FILE", requires_all = ["cert", "ca"])]
    key: Option<PathBuf>,
    /// The certificate chain: leaf, then intermediates (PEM), instead of --dir.
    #[arg(long, value_name = "FILE", requires_all = ["key", "ca"])]
    cert: Option<PathBuf>,
    /// The trust anchors (PEM), instead of --dir.
    #[arg(long, value_name = "FILE", requires_all = ["key", "cert"])]
    ca: Option<PathBuf>,
    /// The agent's meta.json (default with --dir: DIR/..data/meta.json).
    #[arg(long, value_name = "FILE")]
    meta: Option<PathBuf>,
    /// The agent's CRLs, PEM (default with --dir: DIR/crl.pem).
    #[arg(long, value_name = "FILE")]
    crl: Option<PathBuf>,
    /// Which side of mutual TLS the certificate must be able to play.
    #[arg(long, value_enum, default_value_t = Role::Any)]
    role: Role,
    /// Print the report as JSON: {usable, serial, layers: [{name, status, detail}], crls: [...]}.
    #[arg(long)]
    json: bool,
}

/// Runs the command.
pub async fn run(args: Args) -> Exit {
    let (key, cert, ca, default_meta) = match (&args.dir, &args.key, &args.cert, &args.ca) {
        (Some(dir), None, None, None) => {
            // The agent swaps `..data` atomically; resolving it once means
            // the files read belong to one generation even mid-rotation.
            // Plain files (no `..data`) are read where they are.
            let base = std::fs::canonicalize(dir.join("..data")).unwrap_or_else(|_| dir.clone());
            (
                base.join("key.pem"),
                base.join("cert.pem"),
                base.join("ca.pem"),
                Some(base.join("meta.json")),
            )
        }
        (None, Some(key), Some(cert), Some(ca)) => (key.clone(), cert.clone(), ca.clone(), None),
        _ => {
            eprintln!("error: give --dir DIR, or all of --key FILE --cert FILE --ca FILE");
            return Exit::Usage;
        }
    };
    let meta = match (&args.meta, default_meta) {
        // An explicitly named meta file must exist; the default may not.
        (Some(path), _) => MetaInput::Present {
            path: path.display().to_string(),
            text: read(path),
        },
        (None, Some(path)) if path.exists() => MetaInput::Present {
            path: path.display().to_string(),
            text: read(&path),
        },
        (None, _) => MetaInput::Absent,
    };
    // crl.pem is a top-level file, replaced on its own (not part of a
    // generation), so it is read from the directory itself.
    let crl_path = args.crl.clone().or_else(|| {
        args.dir
            .as_ref()
            .map(|dir| dir.join(crate::agent::crl::CRL_FILE))
    });
    let crl = match crl_path {
        None => CrlInput::NotGiven,
        Some(path) if args.crl.is_none() && !path.exists() => CrlInput::Absent {
            path: path.display().to_string(),
        },
        Some(path) => CrlInput::Present {
            path: path.display().to_string(),
            text: read(&path),
        },
    };
    let inputs = Inputs {
        key: file_input(&key),
        certificate: file_input(&cert),
        ca: file_input(&ca),
        meta,
        crl,
    };
    let report = inspect::inspect(&inputs, OffsetDateTime::now_utc(), args.role);
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(error) => {
                eprintln!("error: cannot encode the report: {error}");
                return Exit::Failure;
            }
        }
    } else {
        print!("{}", render(&report));
    }
    if report.usable {
        Exit::Ok
    } else {
        Exit::NotUsable
    }
}

/// The text report: one aligned line per layer, the serial (when the
/// certificate could be read), then the verdict.
fn render(report: &Report) -> String {
    let mut out = String::new();
    for layer in &report.layers {
        let line = format!(
            "{:<4}  {:<7}  {}",
            layer.status.label(),
            layer.name,
            layer.detail
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for crl in &report.crls {
        let next = match crl.next_update {
            Some(next) if crl.stale => {
                format!("nextUpdate {} (PASSED)", crate::agent::rfc3339(next))
            }
            Some(next) => format!("nextUpdate {}", crate::agent::rfc3339(next)),
            None => "no nextUpdate".to_owned(),
        };
        out.push_str(&format!(
            "crl     {} shard {} number {}: thisUpdate {} ago, {next}, {} revoked\n",
            crl.issuer,
            crl.shard,
            crl.number,
            inspect::human(crl.age_seconds),
            crl.revoked
        ));
    }
    if let Some(serial) = &report.serial {
        out.push_str(&format!("serial  {serial}\n"));
    }
    if report.usable {
        out.push_str("usable for mutual TLS\n");
    } else {
        let failed: Vec<&str> = report
            .layers
            .iter()
            .filter(|layer| layer.status == inspect::Status::Fail)
            .map(|layer| layer.name)
            .collect();
        out.push_str(&format!(
            "NOT usable for mutual TLS (failed: {})\n",
            failed.join(", ")
        ));
    }
    out
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|error| error.to_string())
}

fn file_input(path: &Path) -> FileInput {
    // `metadata` follows symlinks: the mode that matters is the target's.
    let mode = std::fs::metadata(path).ok().map(|metadata| {
        use std::os::unix::fs::PermissionsExt as _;
        metadata.permissions().mode()
    });
    FileInput {
        path: path.display().to_string(),
        text: read(path),
        mode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inspect::{Layer, Status};

    #[test]
    fn ok_render_aligns_layers_and_names_failures() {
        let report = Report {
            usable: false,
            serial: Some("0abc".into()),
            layers: vec![
                Layer {
                    name: "files",
                    status: Status::Warn,
                    detail: "mode 0644".into(),
                },
                Layer {
                    name: "key",
                    status: Status::Fail,
                    detail: "mismatch".into(),
                },
            ],
            crls: Vec::new(),
        };
        assert_eq!(
            render(&report),
            "warn  files    mode 0644\nFAIL  key      mismatch\nserial  0abc\nNOT usable for mutual TLS (failed: key)\n"
        );
    }

    #[test]
    fn ok_render_prints_one_line_per_crl_and_flags_a_passed_next_update() {
        let at = |text: &str| {
            OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
        };
        let crl = |shard, stale| inspect::CrlReport {
            issuer: "CN=Issuing".into(),
            issuer_key_id: "ab".into(),
            shard,
            number: "12".into(),
            this_update: at("2026-01-01T00:00:00Z"),
            age_seconds: 150,
            next_update: Some(at("2026-01-01T01:00:00Z")),
            stale,
            revoked: 3,
            url: None,
        };
        let report = Report {
            usable: true,
            serial: None,
            layers: Vec::new(),
            crls: vec![crl(0, false), crl(1, true)],
        };
        assert_eq!(
            render(&report),
            "crl     CN=Issuing shard 0 number 12: thisUpdate 2m 30s ago, nextUpdate 2026-01-01T01:00:00Z, 3 revoked\n\
             crl     CN=Issuing shard 1 number 12: thisUpdate 2m 30s ago, nextUpdate 2026-01-01T01:00:00Z (PASSED), 3 revoked\n\
             usable for mutual TLS\n"
        );
    }
}
