//! What can be wrong with a profile; each message names the file, the line and the fix.

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "profile '{}' not found{hint}: looked for {searched}; run `vla-launch profiles` to list the known ones, or pass a path to a .yaml file",
        crate::input::shown(name, 60)
    )]
    NotFound {
        name: String,
        searched: String,
        /// " (did you mean NAME?)" when a known profile is close, else empty.
        hint: String,
    },
    #[error("{path}: is a directory, not a profile; pass a .yaml file such as {path}/aloha.yaml")]
    IsDirectory { path: String },
    /// `cause` is said in the message, so it is not also the error's source (it was printed twice).
    #[error("{path}: cannot read the profile: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{place}: {message}")]
    Invalid { place: String, message: String },
    #[error("--set {}: {message}", crate::input::shown(arg, 60))]
    BadOverride { arg: String, message: String },
    #[error("{vars}: {place}; {example}, or `--set {key}=VALUE`, before launching")]
    MissingEnv {
        place: String,
        vars: String,
        example: String,
        key: String,
    },
    /// A script argument after `--` that sets what the planner chooses.
    #[error(
        "-- {arg}: the planner sets --{name} (and records it); passing it to the script would override the plan behind its back; pin it with {pin} instead"
    )]
    PlannerFlagPassed {
        arg: String,
        name: String,
        pin: &'static str,
    },
}

impl ProfileError {
    pub(super) fn invalid(place: impl Into<String>, message: impl Into<String>) -> Self {
        ProfileError::Invalid {
            place: place.into(),
            message: message.into(),
        }
    }
}
