//! The script arguments after `--` (`vla-launch --profile aloha -- --max_steps 10`), parsed once:
//! every later reader (the run's step count, `--resume`'s run id, the platform words, the check for
//! flags the script lacks) asks this value instead of walking the raw words again.

use super::error::ProfileError;
use super::schema::PLANNER_FLAGS;

/// One word after `--`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    /// `--name` or `--name=value` (name without the dashes, as written).
    Flag {
        name: String,
        inline: Option<String>,
    },
    /// Anything else (a flag's value, a positional word).
    Other,
}

/// The extra script arguments, as given and as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptArgs {
    raw: Vec<String>,
    words: Vec<Word>,
}

impl ScriptArgs {
    /// Reads the words; refuses one that sets what the planner chooses (`--batch_size 64` would
    /// silently override the plan while the record and the summary still showed the plan's
    /// value), naming the launcher's own flag that pins it.
    pub fn parse(raw: &[String]) -> Result<ScriptArgs, ProfileError> {
        let words: Vec<Word> = raw
            .iter()
            .map(|a| match a.strip_prefix("--") {
                Some(rest) => {
                    let (name, inline) = match rest.split_once('=') {
                        Some((n, v)) => (n, Some(v.to_string())),
                        None => (rest, None),
                    };
                    Word::Flag {
                        name: name.to_string(),
                        inline,
                    }
                }
                None => Word::Other,
            })
            .collect();
        for (arg, word) in raw.iter().zip(&words) {
            let Word::Flag { name, .. } = word else {
                continue;
            };
            let name = name.replace('-', "_");
            if !PLANNER_FLAGS.contains(&name.as_str()) {
                continue;
            }
            let pin = match name.as_str() {
                "batch_size" => "--batch-size N",
                "grad_accumulation_steps" => "--grad-accum N",
                "use_fsdp" => "--strategy fsdp (or ddp)",
                _ => "--checkpointing on (or off)",
            };
            return Err(ProfileError::PlannerFlagPassed {
                arg: crate::input::excerpt(arg, 40),
                name,
                pin,
            });
        }
        Ok(ScriptArgs {
            raw: raw.to_vec(),
            words,
        })
    }

    /// The words as given, passed to the script unchanged.
    pub fn raw(&self) -> &[String] {
        &self.raw
    }

    /// The value the script gets for `--name`: its last occurrence's (`--name V` or
    /// `--name=V`); None when absent or when the last one has no value.
    pub fn last_value(&self, name: &str) -> Option<&str> {
        let i = self
            .words
            .iter()
            .rposition(|w| matches!(w, Word::Flag { name: n, .. } if n == name))?;
        match &self.words[i] {
            Word::Flag {
                inline: Some(v), ..
            } => Some(v),
            _ => self.raw.get(i + 1).map(String::as_str),
        }
    }

    /// `--max_steps` passed through, when it is a number.
    pub fn max_steps(&self) -> Option<u64> {
        self.last_value("max_steps")?.parse().ok()
    }

    /// The names of the `--name` words, in order (without dashes or `=value`).
    pub fn flag_names(&self) -> impl Iterator<Item = &str> {
        self.words.iter().filter_map(|w| match w {
            Word::Flag { name, .. } => Some(name.as_str()),
            Word::Other => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> ScriptArgs {
        ScriptArgs::parse(&words.iter().map(|w| w.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn the_last_occurrence_is_what_the_script_gets() {
        let a = args(&[
            "--max_steps",
            "10",
            "--max_steps=20",
            "--run_id_override",
            "x",
        ]);
        assert_eq!(a.max_steps(), Some(20));
        assert_eq!(a.last_value("run_id_override"), Some("x"));
        assert_eq!(a.last_value("vla_path"), None);
        assert_eq!(args(&["--max_steps"]).max_steps(), None);
        assert_eq!(args(&["--max_steps", "many"]).max_steps(), None);
        assert_eq!(
            a.flag_names().collect::<Vec<_>>(),
            ["max_steps", "max_steps", "run_id_override"]
        );
    }

    #[test]
    fn planner_flags_are_refused_with_the_pin_that_sets_them() {
        for (word, pin) in [
            ("--batch_size=64", "--batch-size N"),
            ("--grad-accumulation-steps", "--grad-accum N"),
            ("--use_fsdp", "--strategy fsdp"),
            ("--gradient_checkpointing", "--checkpointing on"),
        ] {
            let e = ScriptArgs::parse(&[word.to_string(), "1".into()])
                .unwrap_err()
                .to_string();
            assert!(e.contains(pin) && e.contains("override the plan"), "{e}");
        }
        assert_eq!(args(&["batch_size"]).raw(), ["batch_size"]);
    }
}
