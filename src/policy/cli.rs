//! The `warden policy ...` commands: check a policy file, test it against a table of
//! calls, replay recorded decisions under it.

use std::path::PathBuf;

use clap::Subcommand;

use super::decide::{Policy, Verdict};
use super::{cases, check, replay};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file; report rules that can never match and tools no rule names.
    Check { file: PathBuf },
    /// Decide a table of calls (YAML) under a policy; exits non-zero on any mismatch.
    Test { file: PathBuf, cases: PathBuf },
    /// Re-decide the calls recorded in an audit log (its folder or a file) under a
    /// candidate policy and print what would change.
    Replay {
        #[arg(long)]
        policy: PathBuf,
        #[arg(long)]
        log: PathBuf,
    },
}

pub fn run(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Check { file } => {
            let policy = Policy::load(&file)?;
            let findings = check::analyse(&policy);
            println!(
                "{}: valid; {} rules, {} tools, snapshot {}",
                file.display(),
                policy.rules().len(),
                policy.catalog().count(),
                policy.snapshot()
            );
            for unreachable in &findings.unreachable {
                println!(
                    "warning: rule `{}` is unreachable: rule `{}` before it matches every call it matches",
                    unreachable.rule, unreachable.shadowed_by
                );
            }
            for tool in &findings.unmentioned {
                println!("warning: no rule names tool `{tool}`; only generic rules and the default apply to it");
            }
            if findings.default != Verdict::Deny {
                println!(
                    "warning: the default is {}: calls no rule matches are not denied",
                    findings.default.as_str()
                );
            }
            Ok(())
        }
        PolicyCommand::Test {
            file,
            cases: cases_file,
        } => {
            let policy = Policy::load(&file)?;
            let results = cases::run(&policy, &cases::load(&cases_file)?);
            print!("{}", cases::table(&results));
            let failed = results.iter().filter(|r| r.mismatch.is_some()).count();
            anyhow::ensure!(
                failed == 0,
                "{failed} of {} cases decided otherwise than expected",
                results.len()
            );
            Ok(())
        }
        PolicyCommand::Replay { policy, log } => {
            let policy = Policy::load(&policy)?;
            print!("{}", replay::replay(&policy, &log)?.render());
            Ok(())
        }
    }
}
