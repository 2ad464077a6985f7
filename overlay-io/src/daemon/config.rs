//! A VNF's configuration: its layers, how they are read, and how their errors are told.
//!
//! Layers, lowest precedence first (figment merges them in this order):
//!
//! 1. `VnfApp::Raw::default()`;
//! 2. the YAML file (`--config`);
//! 3. environment variables `VNF_<KEY>`, nested keys joined by `__`: `VNF_UNDERLAY__PORT=4790`
//!    sets `underlay.port`. These are the semantics of figment's
//!    `Env::prefixed("VNF_").split("__")` (prefix matched case-insensitively, keys lowercased,
//!    values parsed as numbers, booleans, `[lists]` or `{maps}` when they look like one).
//!    The provider is ours rather than `Env` so that it reads an explicit list of variables
//!    (tests never touch the process environment, and a reload reads the variables captured
//!    at start) and so that an error can name the exact variable. `VNF_CONFIG`, `VNF_ADMIN`,
//!    `VNF_LOG_FORMAT` and `VNF_LOG_LEVEL` are the shell's own and are left out;
//! 4. `--set KEY=VALUE` flags, `KEY` a dotted path, `VALUE` parsed like an environment value.
//!
//! Errors tell where they are: `FILE:LINE:COLUMN: message`. The file is first parsed on its
//! own by serde-saphyr straight into `Raw`, so syntax errors, unknown fields and wrong types
//! carry serde-saphyr's location; only then are the layers merged. A semantic error from
//! `compile` has a path, which [`Locator`] turns back into a line, unless the value at that
//! path came from a variable or a flag, which is named instead: `VNF_UNDERLAY__PORT: message`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use figment::providers::{Format, Serialized};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde_saphyr::figment::Yaml;

use super::locate::{Locator, Position, join_path, scalar_at, split_path};
use super::{ConfigError, VnfApp};

/// The prefix of the environment variables that configure a VNF.
pub const ENV_PREFIX: &str = "VNF_";
/// What joins nested keys in a variable's name: `VNF_UNDERLAY__PORT` is `underlay.port`.
pub const ENV_SEPARATOR: &str = "__";
/// Variables under [`ENV_PREFIX`] that configure the shell, not the VNF (without the prefix).
pub const SHELL_ENV: [&str; 4] = ["CONFIG", "ADMIN", "LOG_FORMAT", "LOG_LEVEL"];

/// Everything a configuration is read from, captured once at start so that a reload reads
/// the same file, variables and flags.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The YAML file.
    pub file: PathBuf,
    env: Vec<Setting>,
    overrides: Vec<Setting>,
}

/// One value set by a variable or a flag.
#[derive(Debug, Clone)]
struct Setting {
    /// How the user wrote it: `VNF_UNDERLAY__PORT`, or `underlay.port` for `--set`.
    name: String,
    /// The key path it sets.
    key: Vec<String>,
    value: String,
}

impl Sources {
    /// Sources from explicit environment variables (all of them: those without the `VNF_`
    /// prefix and the shell's own are skipped here) and `--set` pairs `(KEY, VALUE)`.
    pub fn new<E, O>(file: impl Into<PathBuf>, env: E, overrides: O) -> Self
    where
        E: IntoIterator<Item = (String, String)>,
        O: IntoIterator<Item = (String, String)>,
    {
        let mut env: Vec<Setting> = env.into_iter().filter_map(env_setting).collect();
        // Variables come in no particular order; sort so a conflict (`VNF_A=1` and
        // `VNF_A__B=2`) resolves the same way every time.
        env.sort_by(|a, b| a.key.cmp(&b.key));
        let overrides = overrides
            .into_iter()
            .map(|(key, value)| Setting {
                key: key.split('.').map(str::to_string).collect(),
                name: key,
                value,
            })
            .collect();
        Sources {
            file: file.into(),
            env,
            overrides,
        }
    }

    /// Sources from this process's environment.
    pub fn from_process(file: impl Into<PathBuf>, overrides: Vec<(String, String)>) -> Self {
        let env = std::env::vars_os().map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        });
        Sources::new(file, env, overrides)
    }
}

/// Figment's `Env::prefixed(ENV_PREFIX).split(ENV_SEPARATOR)`, minus the shell's variables.
fn env_setting((name, value): (String, String)) -> Option<Setting> {
    let trimmed = name.trim();
    let prefix = trimmed.get(..ENV_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(ENV_PREFIX) {
        return None;
    }
    let rest = &trimmed[ENV_PREFIX.len()..];
    if SHELL_ENV.iter().any(|s| s.eq_ignore_ascii_case(rest)) {
        return None;
    }
    let key: Vec<String> = rest
        .split(ENV_SEPARATOR)
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    // Like figment, ignore names with an empty segment (`VNF_`, `VNF_A____B`).
    if key.iter().any(String::is_empty) {
        return None;
    }
    Some(Setting {
        name: trimmed.to_string(),
        key,
        value,
    })
}

/// Provider names, also how an error's origin is recognised.
const ENV_LAYER: &str = "environment variable(s)";
const SET_LAYER: &str = "--set flag(s)";

/// A figment provider over variables or flags.
struct SettingsLayer<'a> {
    name: &'static str,
    settings: &'a [Setting],
}

impl Provider for SettingsLayer<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for setting in self.settings {
            let value = Value::from_str(&setting.value).unwrap_or_else(|never| match never {});
            insert(&mut dict, &setting.key, value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Set `key` in nested `dict`, replacing whatever is in the way.
fn insert(dict: &mut Dict, key: &[String], value: Value) {
    let Some((first, rest)) = key.split_first() else {
        return;
    };
    if rest.is_empty() {
        dict.insert(first.clone(), value);
        return;
    }
    let child = dict
        .entry(first.clone())
        .or_insert_with(|| Value::from(Dict::new()));
    if child.as_dict().is_none() {
        *child = Value::from(Dict::new());
    }
    if let Value::Dict(_, inner) = child {
        insert(inner, rest, value);
    }
}

/// The YAML file as a figment provider, reading text already in memory (the same text the
/// first parse saw) and naming the file in its metadata.
struct FileLayer<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Provider for FileLayer<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::from("YAML file", self.file)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Yaml::string(self.text).data()
    }
}

/// A loaded configuration: as merged, and compiled.
#[derive(Debug)]
pub struct Loaded<R, C> {
    /// The effective raw configuration (what `GET /config` shows).
    pub raw: R,
    /// What `compile` made of it.
    pub config: C,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is invalid; every problem found, one per line.
    #[error("{}", lines(.0))]
    Invalid(Vec<Diagnostic>),
}

fn lines(diagnostics: &[Diagnostic]) -> String {
    let lines: Vec<String> = diagnostics.iter().map(Diagnostic::to_string).collect();
    lines.join("\n")
}

impl LoadError {
    /// One line per problem, as printed.
    pub fn lines(&self) -> Vec<String> {
        match self {
            LoadError::Invalid(diagnostics) => diagnostics.iter().map(|d| d.to_string()).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// One configuration problem and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where the offending value came from.
    pub origin: Origin,
    /// The key path (`vnis[1].flood[0]`), empty when unknown or the whole config.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The YAML file, at `position` (`None` when the key is nowhere in the file, e.g. a
    /// default value that `compile` refused).
    File {
        /// The file.
        file: PathBuf,
        /// Where in it.
        position: Option<Position>,
    },
    /// An environment variable.
    Env {
        /// Its name, `VNF_UNDERLAY__PORT`.
        var: String,
        /// Whether it set exactly the offending key (not a map or list above it).
        exact: bool,
    },
    /// A `--set KEY=VALUE` flag.
    Flag {
        /// Its `KEY`.
        key: String,
        /// Whether it set exactly the offending key.
        exact: bool,
    },
}

impl fmt::Display for Diagnostic {
    /// `FILE:LINE:COLUMN: path: message`, `FILE: path: message`, `VNF_VAR: message`
    /// or `--set KEY: message`; the path is left out where it adds nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show_path = match &self.origin {
            Origin::File { file, position } => {
                match position {
                    Some(p) => write!(f, "{}:{p}: ", file.display())?,
                    None => write!(f, "{}: ", file.display())?,
                }
                !self.path.is_empty()
            }
            Origin::Env { var, exact } => {
                write!(f, "{var}: ")?;
                !exact && !self.path.is_empty()
            }
            Origin::Flag { key, exact } => {
                write!(f, "--set {key}: ")?;
                !exact && !self.path.is_empty()
            }
        };
        if show_path {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// What errors are resolved against: the sources and the file's positions.
struct Context<'a> {
    sources: &'a Sources,
    locator: &'a Locator,
}

impl Context<'_> {
    /// Where the value at `segments` came from: a flag or a variable that set it (or a map
    /// or list above it), else the file.
    fn origin(&self, segments: &[String]) -> Origin {
        let owner = |settings: &[Setting]| {
            settings
                .iter()
                .filter(|s| segments.starts_with(&s.key))
                .max_by_key(|s| s.key.len())
                .map(|s| (s.name.clone(), s.key.len() == segments.len()))
        };
        if let Some((key, exact)) = owner(&self.sources.overrides) {
            return Origin::Flag { key, exact };
        }
        if let Some((var, exact)) = owner(&self.sources.env) {
            return Origin::Env { var, exact };
        }
        Origin::File {
            file: self.sources.file.clone(),
            position: self.locator.find(segments).map(|(p, _)| p),
        }
    }

    fn diagnose_config_error(&self, error: ConfigError) -> Diagnostic {
        Diagnostic {
            origin: self.origin(&split_path(&error.path)),
            path: error.path,
            message: error.message,
        }
    }

    fn diagnose_figment(&self, error: figment::Error) -> Diagnostic {
        let mut segments = error.path.clone();
        // Make sure an unknown key's own path is resolved (not its parent map's), so that
        // `VNF_UNDERLAY__PROT` is named.
        if let figment::error::Kind::UnknownField(field, _) = &error.kind
            && segments.last() != Some(field)
        {
            segments.push(field.clone());
        }
        Diagnostic {
            origin: self.origin(&segments),
            path: join_path(&segments),
            message: error.kind.to_string(),
        }
    }

    fn diagnose_yaml(&self, error: &serde_saphyr::Error, text: &str) -> Diagnostic {
        yaml_diagnostic(&self.sources.file, error, text)
    }
}

/// A serde-saphyr error (syntax, wrong type, unknown field) as a [`Diagnostic`] at its
/// line and column of `file`, whose contents are `text`.
pub fn yaml_diagnostic(file: &Path, error: &serde_saphyr::Error, text: &str) -> Diagnostic {
    let mut inner = error.without_snippet();
    while let serde_saphyr::Error::AliasError { error, .. }
    | serde_saphyr::Error::WithSnippet { error, .. } = inner
    {
        inner = error;
    }
    let position = error.location().filter(|l| l.line() > 0).map(|l| Position {
        line: l.line(),
        column: l.column(),
    });
    let mut message = serde_saphyr::MessageFormatter::format_message(
        &serde_saphyr::DefaultMessageFormatter,
        inner,
    )
    .into_owned();
    // "invalid u16" alone does not say what was there, nor what would do.
    if let serde_saphyr::Error::InvalidScalar { ty, .. } = inner
        && let Some(value) = position.and_then(|p| scalar_at(text, p))
    {
        message = match integer_range(ty) {
            Some(range) => format!("`{value}` is not a valid {ty} ({range})"),
            None => format!("`{value}` is not a valid {ty}"),
        };
    }
    Diagnostic {
        origin: Origin::File {
            file: file.to_path_buf(),
            position,
        },
        path: String::new(),
        // The formatter's text is not sanitised for a terminal (see its docs): escape
        // control characters, but leave quotes readable.
        message: message
            .chars()
            .flat_map(|c| {
                let keep = !c.is_control();
                let esc = (!keep).then(|| c.escape_default());
                keep.then_some(c)
                    .into_iter()
                    .chain(esc.into_iter().flatten())
            })
            .collect(),
    }
}

/// The range of an integer type, by its serde name.
fn integer_range(ty: &str) -> Option<&'static str> {
    Some(match ty {
        "u8" => "0..=255",
        "u16" => "0..=65535",
        "u32" => "0..=4294967295",
        "u64" => "0..=18446744073709551615",
        "i8" => "-128..=127",
        "i16" => "-32768..=32767",
        "i32" => "-2147483648..=2147483647",
        "i64" => "-9223372036854775808..=9223372036854775807",
        _ => return None,
    })
}

/// Read, merge and compile the configuration.
pub fn load<A: VnfApp>(sources: &Sources) -> Result<Loaded<A::Raw, A::Config>, LoadError> {
    let text = std::fs::read_to_string(&sources.file).map_err(|source| LoadError::Read {
        file: sources.file.clone(),
        source,
    })?;
    let locator = Locator::parse(&text);
    let context = Context {
        sources,
        locator: &locator,
    };

    let mut figment = Figment::from(Serialized::defaults(A::Raw::default()));
    // An empty (or comment-only) file is an empty map, not an error.
    if locator.has_document() {
        // The file alone first, for errors with a line and column. A missing field is left
        // to the merge: another layer may well provide it.
        let options = serde_saphyr::options! { with_snippet: false };
        if let Err(error) = serde_saphyr::from_str_with_options::<A::Raw>(&text, options)
            && !matches!(
                error.without_snippet(),
                serde_saphyr::Error::SerdeMissingField { .. }
            )
        {
            return Err(LoadError::Invalid(vec![
                context.diagnose_yaml(&error, &text),
            ]));
        }
        figment = figment.merge(FileLayer {
            file: &sources.file,
            text: &text,
        });
    }
    figment = figment
        .merge(SettingsLayer {
            name: ENV_LAYER,
            settings: &sources.env,
        })
        .merge(SettingsLayer {
            name: SET_LAYER,
            settings: &sources.overrides,
        });

    let raw: A::Raw = figment.extract().map_err(|error| {
        LoadError::Invalid(
            error
                .into_iter()
                .map(|e| context.diagnose_figment(e))
                .collect(),
        )
    })?;
    let config = A::compile(&raw).map_err(|errors| {
        let mut diagnostics: Vec<Diagnostic> = errors
            .into_iter()
            .map(|e| context.diagnose_config_error(e))
            .collect();
        if diagnostics.is_empty() {
            diagnostics.push(context.diagnose_config_error(ConfigError::new(
                "",
                "configuration refused (no reason given)",
            )));
        }
        LoadError::Invalid(diagnostics)
    })?;
    Ok(Loaded { raw, config })
}

/// Parse a `--set KEY=VALUE` argument.
pub fn parse_override(arg: &str) -> Result<(String, String), String> {
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("`{arg}` is not KEY=VALUE"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(format!(
            "`{key}` is not a dotted key path like `underlay.port`"
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::daemon::testing::{Fake, write_config};

    fn sources(file: &Path, env: &[(&str, &str)], sets: &[(&str, &str)]) -> Sources {
        let own = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Sources::new(file, own(env), own(sets))
    }

    /// Load `yaml` with `env` and return the error lines with the temp dir's path replaced
    /// by `FILE`.
    fn errors(yaml: &str, env: &[(&str, &str)]) -> Vec<String> {
        let (_dir, file) = write_config(yaml);
        match load::<Fake>(&sources(&file, env, &[])) {
            Ok(_) => panic!("{yaml:?} loaded"),
            Err(e) => e
                .lines()
                .into_iter()
                .map(|l| l.replace(&file.display().to_string(), "FILE"))
                .collect(),
        }
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let lines = errors("name: edge\nunderlay:\n  port: 4789\n address: x\n", &[]);
        assert_eq!(
            lines,
            ["FILE:4:2: while parsing a block mapping, did not find expected key"]
        );
        let lines = errors("name: 'edge\n", &[]);
        assert_eq!(lines, ["FILE:1:7: unclosed quote"]);
    }

    #[test]
    fn unknown_field_is_named_with_its_line_and_column() {
        let lines = errors("name: edge\nunderlay:\n  prot: 4789\n", &[]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("FILE:3:3: "), "{lines:?}");
        assert!(lines[0].contains("prot"), "{lines:?}");
    }

    #[test]
    fn wrong_type_has_line_and_column() {
        let lines = errors("underlay:\n  port: lots\n", &[]);
        assert_eq!(lines, ["FILE:2:9: `lots` is not a valid u16 (0..=65535)"]);
        let lines = errors("underlay:\n  port: 70000\n", &[]);
        assert_eq!(lines, ["FILE:2:9: `70000` is not a valid u16 (0..=65535)"]);
        let lines = errors("name: [edge]\n", &[]);
        assert_eq!(lines, ["FILE:1:7: expected string scalar"]);
    }

    #[test]
    fn semantic_errors_point_at_their_keys_all_at_once() {
        let yaml = "\
name: edge
underlay:
  port: 4789
vnis:
  - id: 5001
    flood: [10.0.0.1]
  - id: 0
    flood:
      - 10.0.0.2
      - not-an-ip
";
        let lines = errors(yaml, &[]);
        assert_eq!(
            lines,
            [
                "FILE:7:9: vnis[1].id: VNI 0 is outside 1..=16777215",
                "FILE:10:9: vnis[1].flood[1]: `not-an-ip` is not an IPv4 address",
            ]
        );
    }

    #[test]
    fn semantic_error_on_a_defaulted_key_points_at_its_parent() {
        let lines = errors("vnis:\n  - flood: []\n", &[]);
        assert_eq!(
            lines,
            ["FILE:2:5: vnis[0].id: VNI 0 is outside 1..=16777215"]
        );
        let lines = errors("name: \"\"\n", &[]);
        assert_eq!(lines, ["FILE:1:7: name: must not be empty"]);
        let lines = errors("vnis: []\n", &[("VNF_NAME", "")]);
        assert_eq!(lines, ["VNF_NAME: must not be empty"]);
    }

    #[test]
    fn layers_env_over_file_over_default_and_flags_over_all() {
        let (_dir, file) = write_config("name: edge\nunderlay:\n  port: 5000\n");

        let loaded = load::<Fake>(&sources(&file, &[], &[])).expect("loads");
        assert_eq!(loaded.raw.underlay.port, 5000, "file over default");
        assert_eq!(loaded.raw.underlay.address, "0.0.0.0", "default kept");

        let env = [
            ("VNF_UNDERLAY__PORT", "4790"),
            ("vnf_underlay__address", "192.0.2.1"),
            ("VNF_ADMIN", "127.0.0.1:1"),
            ("VNF_LOG_FORMAT", "json"),
            ("HOME", "/root"),
        ];
        let loaded = load::<Fake>(&sources(&file, &env, &[])).expect("loads");
        assert_eq!(loaded.raw.underlay.port, 4790, "env over file");
        assert_eq!(loaded.raw.underlay.address, "192.0.2.1");
        assert_eq!(loaded.raw.name, "edge");

        let sets = [("underlay.port", "4791")];
        let loaded = load::<Fake>(&sources(&file, &env, &sets)).expect("loads");
        assert_eq!(loaded.raw.underlay.port, 4791, "flag over env");
        assert_eq!(loaded.config.port, 4791, "compiled from the merge");

        let env = [("VNF_VNIS", "[{id=7, flood=[\"10.0.0.1\"]}]")];
        let loaded = load::<Fake>(&sources(&file, &env, &[])).expect("loads");
        assert_eq!(loaded.config.vnis, [(7, vec![Ipv4Addr::new(10, 0, 0, 1)])]);
    }

    #[test]
    fn env_and_flag_errors_name_their_source() {
        let (_dir, file) = write_config("underlay:\n  port: 5000\n");
        let fail = |env: &[(&str, &str)], sets: &[(&str, &str)]| -> Vec<String> {
            match load::<Fake>(&sources(&file, env, sets)) {
                Ok(_) => panic!("loaded"),
                Err(e) => e.lines(),
            }
        };
        assert_eq!(
            fail(&[("VNF_UNDERLAY__PORT", "0")], &[]),
            ["VNF_UNDERLAY__PORT: port 0 is reserved"]
        );
        assert_eq!(
            fail(&[], &[("underlay.port", "0")]),
            ["--set underlay.port: port 0 is reserved"]
        );
        let wrong_type = fail(&[("VNF_UNDERLAY__PORT", "lots")], &[]);
        assert!(
            wrong_type[0].starts_with("VNF_UNDERLAY__PORT: "),
            "{wrong_type:?}"
        );
        let unknown = fail(&[("VNF_UNDERLAY__PROT", "1")], &[]);
        assert!(
            unknown[0].starts_with("VNF_UNDERLAY__PROT: "),
            "{unknown:?}"
        );
        assert!(unknown[0].contains("prot"), "{unknown:?}");
        let list = fail(&[("VNF_VNIS", "[{id=0}]")], &[]);
        assert_eq!(
            list,
            ["VNF_VNIS: vnis[0].id: VNI 0 is outside 1..=16777215"]
        );
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let (_dir, file) = write_config("# nothing yet\n");
        let loaded = load::<Fake>(&sources(&file, &[], &[])).expect("loads");
        assert_eq!(loaded.raw.underlay.port, 4789);
    }

    #[test]
    fn unreadable_file_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("missing.yaml");
        let err = load::<Fake>(&sources(&file, &[], &[])).expect_err("missing");
        assert!(matches!(err, LoadError::Read { .. }));
        assert!(
            err.to_string().contains("missing.yaml: cannot read: "),
            "{err}"
        );
    }

    #[test]
    fn override_syntax() {
        assert_eq!(
            parse_override("underlay.port=4790"),
            Ok(("underlay.port".into(), "4790".into()))
        );
        assert_eq!(parse_override("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_override("underlay.port").is_err());
        assert!(parse_override("a..b=1").is_err());
    }
}
