//! The man pages in `man/` agree with the code.
//!
//! The binaries' pages are generated from their clap definitions plus a
//! hand-written tail (`man/extra/<binary>.roff`: environment, files,
//! examples); the committed files must equal a fresh rendering, so a flag
//! cannot change without its page. Refresh them with
//!
//! ```text
//! IPCHUB_UPDATE_MAN=1 cargo test --test man_pages
//! ```
//!
//! `ipchub.toml.5` and `ipchub-protocol.7` are written by hand; they are
//! checked against the typed config tree and the wire format instead. Every
//! page must pass `man --warnings` the way lintian runs it.

#[path = "common/deadline.rs"]
mod deadline;
#[allow(unused_imports)]
use deadline::{ChildWithin as _, CommandWithin as _, LIMIT};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_mangen::Man;
use ipchub::config::{
    AccessRule, ChannelRule, Config, MqttExport, MqttImport, Overflow, Restart, SpawnConfig,
};
use ipchub::wire::{ErrorCode, FrameType};

const REFRESH: &str = "IPCHUB_UPDATE_MAN=1 cargo test --test man_pages";

/// A page rendered from a binary's clap definition.
struct Generated {
    binary: &'static str,
    section: &'static str,
    cmd: clap::Command,
}

/// Every binary's page. A new binary fails `every_binary_has_a_page` until
/// it is listed here (with its `man/extra/<binary>.roff`).
fn generated_pages() -> Vec<Generated> {
    vec![
        Generated {
            binary: "ipchubd",
            section: "8",
            cmd: ipchub::daemon::Args::command(),
        },
        Generated {
            binary: "ipchubctl",
            section: "1",
            cmd: ipchub::cli::ctl::Args::command(),
        },
        Generated {
            binary: "ipchub-bench",
            section: "1",
            cmd: ipchub::bench::cli::Args::command(),
        },
    ]
}

/// Pages written by hand: (file, title, section).
const HAND_WRITTEN: [(&str, &str, &str); 3] = [
    ("ipchub.toml.5", "ipchub.toml", "5"),
    ("ipchub-protocol.7", "ipchub-protocol", "7"),
    ("libipchub.3", "libipchub", "3"),
];

fn man_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("man")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn updating() -> bool {
    std::env::var_os("IPCHUB_UPDATE_MAN").is_some_and(|v| !v.is_empty())
}

/// The footer every page carries, so a page says which release it describes.
fn source() -> String {
    format!("ipchub {}", env!("CARGO_PKG_VERSION"))
}

/// The date of that release: the newest debian/changelog entry (which
/// debian/check-version keeps in step with Cargo.toml), as YYYY-MM-DD.
fn release_date() -> String {
    let changelog = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("debian/changelog"));
    let trailer = changelog
        .lines()
        .find_map(|l| l.strip_prefix(" -- "))
        .expect("debian/changelog has no trailer line");
    // " -- Name <mail>  Sun, 29 Nov 2026 18:46:58 +0000"
    let date = trailer.rsplit("  ").next().unwrap();
    let words: Vec<&str> = date.split_whitespace().collect();
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| Some(m) == words.get(2))
    .unwrap_or_else(|| panic!("cannot read the date in debian/changelog: {date}"));
    format!(
        "{}-{:02}-{:02}",
        words[3],
        month + 1,
        words[1].parse::<u8>().unwrap()
    )
}

/// The one-line summary for NAME, and the rest for DESCRIPTION, from the
/// doc comment (`/// ipchubd: the ipchub publish/subscribe daemon.` then
/// paragraphs). The `about` clap shows in `-h` is the crate description,
/// the same for every binary, so it would make a poor NAME line.
fn summary_and_description(cmd: &clap::Command) -> (String, String) {
    let long = cmd
        .get_long_about()
        .or(cmd.get_about())
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (first, rest) = long.split_once("\n\n").unwrap_or((&long, ""));
    let prefix = format!("{}: ", cmd.get_name());
    let summary = first
        .trim()
        .trim_start_matches(&prefix)
        .trim_end_matches('.');
    let description = if rest.trim().is_empty() { first } else { rest };
    (summary.to_string(), description.trim().to_string())
}

impl Generated {
    fn file(&self) -> String {
        format!("{}.{}", self.binary, self.section)
    }

    /// clap_mangen renders only the top level of a command, so the options
    /// of each subcommand are rendered into a COMMANDS section by hand.
    fn render(&self) -> String {
        let (summary, description) = summary_and_description(&self.cmd);
        let mut cmd = self
            .cmd
            .clone()
            .disable_help_subcommand(true)
            .subcommand_value_name("COMMAND")
            .about(summary)
            .long_about(description);
        cmd.build();
        let man = Man::new(cmd.clone())
            .section(self.section)
            .date(release_date())
            .source(source());
        let mut out = Vec::new();
        man.render_title(&mut out).unwrap();
        man.render_name_section(&mut out).unwrap();
        man.render_synopsis_section(&mut out).unwrap();
        man.render_description_section(&mut out).unwrap();
        man.render_options_section(&mut out).unwrap();
        if cmd.has_subcommands() {
            out.extend_from_slice(b".SH COMMANDS\n");
            for sub in cmd.get_subcommands() {
                render_subcommand(sub, &mut out);
            }
        }
        // Every render_* call repeats roff's two-line preamble; keep the first.
        let mut page = String::new();
        let mut preamble_seen = 0;
        for line in String::from_utf8(out).unwrap().lines() {
            if line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq") {
                preamble_seen += 1;
                if preamble_seen > 2 {
                    continue;
                }
            }
            page.push_str(line);
            page.push('\n');
        }
        if let Some(after) = self.cmd.get_after_long_help() {
            page.push_str(&render_after_help(&after.to_string()));
        }
        page.push_str(&read(
            &man_dir()
                .join("extra")
                .join(format!("{}.roff", self.binary)),
        ));
        page
    }
}

/// The text `--help` shows after the options (`Exit status:` and a list
/// of `  CODE  meaning` lines) as a section of its own: the heading from
/// its first line, each entry a tagged paragraph.
fn render_after_help(text: &str) -> String {
    let escape = |s: &str| {
        let s = s.replace('\\', "\\e").replace('-', "\\-");
        if s.starts_with('.') || s.starts_with('\'') {
            format!("\\&{s}")
        } else {
            s
        }
    };
    let mut lines = text.lines();
    let heading = lines.next().unwrap_or("").trim().trim_end_matches(':');
    let mut out = format!(".SH \"{}\"\n", heading.to_uppercase());
    for line in lines {
        let line = line.trim();
        match line.split_once(char::is_whitespace) {
            Some((tag, rest)) if !tag.is_empty() && tag.chars().all(|c| c.is_ascii_digit()) => {
                out.push_str(&format!(".TP\n\\fB{tag}\\fR\n{}\n", escape(rest.trim())));
            }
            _ if line.is_empty() => out.push_str(".PP\n"),
            _ => out.push_str(&format!("{}\n", escape(line))),
        }
    }
    out
}

/// One subcommand as a subsection: usage, description, then its own
/// options. Global options and --help are left to the top of the page.
fn render_subcommand(sub: &clap::Command, out: &mut Vec<u8>) {
    let sub = sub.clone().mut_args(|a| {
        if a.is_global_set() || a.get_id() == "help" {
            a.hide(true)
        } else {
            a
        }
    });
    let man = Man::new(sub.clone());
    let mut body = Vec::new();
    man.render_synopsis_section(&mut body).unwrap();
    body.extend_from_slice(b".PP\n");
    man.render_description_section(&mut body).unwrap();
    man.render_options_section(&mut body).unwrap();
    // Each render_* call opens with its own .SH, which would end COMMANDS.
    let body = String::from_utf8(body).unwrap();
    out.extend_from_slice(format!(".SS {}\n", sub.get_name()).as_bytes());
    for line in body.lines().filter(|l| !l.starts_with(".SH ")) {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
}

/// Page text as a reader sees it: escapes and font changes removed.
fn plain(roff: &str) -> String {
    roff.replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\fP", "")
        .replace("\\-", "-")
        .replace("\\(aq", "'")
        .replace("\\(dq", "\"")
        .replace("\\&", "")
        .replace("\\e", "\\")
}

/// The page split at `.SH`/`.SS` headings: heading (unquoted) → lines.
fn sections(roff: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in roff.lines() {
        if let Some(h) = line
            .strip_prefix(".SH ")
            .or_else(|| line.strip_prefix(".SS "))
        {
            current = plain(h.trim().trim_matches('"'));
            out.entry(current.clone()).or_default();
        } else {
            out.entry(current.clone())
                .or_default()
                .push(line.to_string());
        }
    }
    out
}

/// The tags of a section's `.TP` entries (the line after each `.TP`), plain.
fn tags(lines: &[String]) -> Vec<String> {
    lines
        .windows(2)
        .filter(|w| w[0] == ".TP")
        .map(|w| plain(&w[1]))
        .collect()
}

/// In update mode, write every page before any test reads one (tests run
/// in parallel).
fn update_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if !updating() {
            return;
        }
        for page in generated_pages() {
            std::fs::write(man_dir().join(page.file()), page.render()).unwrap();
        }
        for (file, title, section) in HAND_WRITTEN {
            let path = man_dir().join(file);
            let text = read(&path);
            let rest = text.split_once('\n').map_or("", |(_, r)| r);
            std::fs::write(&path, format!("{}\n{rest}", title_line(title, section))).unwrap();
        }
    });
}

/// A page as committed (after `update_once`).
fn committed(file: &str) -> String {
    update_once();
    read(&man_dir().join(file))
}

fn title_line(title: &str, section: &str) -> String {
    format!(".TH {title} {section} {} \"{}\"", release_date(), source())
}

#[test]
fn generated_pages_match_the_clap_definitions() {
    update_once();
    let mut stale = Vec::new();
    for page in generated_pages() {
        let on_disk = std::fs::read_to_string(man_dir().join(page.file())).ok();
        if on_disk.as_deref() != Some(page.render().as_str()) {
            stale.push(format!("man/{}", page.file()));
        }
    }
    assert!(
        stale.is_empty(),
        "{} differ from the clap definitions and man/extra/; refresh them with\n    {REFRESH}\nand commit the result",
        stale.join(", ")
    );
}

#[test]
fn hand_written_pages_name_this_release() {
    for (file, title, section) in HAND_WRITTEN {
        let text = committed(file);
        let first = text.lines().next().unwrap_or("");
        assert_eq!(
            first,
            title_line(title, section),
            "man/{file}: first line; refresh with\n    {REFRESH}"
        );
    }
}

/// libipchub(3) names every function of the C API's header (which a test
/// of bindings/c keeps equal to the code).
#[test]
fn library_page_names_every_c_function() {
    let header = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("bindings/c/include/ipchub.h"));
    let page = committed("libipchub.3");
    let synopsis = sections(&page)
        .remove("SYNOPSIS")
        .unwrap_or_default()
        .join("\n");
    let mut missing = Vec::new();
    for line in header.lines() {
        // Declarations read "<type> ipchub_<name>(...": take each name.
        for word in line.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '(')) {
            if let Some(name) = word
                .strip_prefix("ipchub_")
                .and_then(|w| w.strip_suffix('('))
            {
                let name = format!("ipchub_{name}");
                if !synopsis.contains(&name) && !missing.contains(&name) {
                    missing.push(name);
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "man/libipchub.3's SYNOPSIS lacks {}",
        missing.join(", ")
    );
}

/// Binary names from Cargo.toml's [[bin]] tables and src/bin/.
fn binaries() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest: toml::Table = toml::from_str(&read(&root.join("Cargo.toml"))).unwrap();
    let mut names: BTreeSet<String> = manifest
        .get("bin")
        .and_then(|b| b.as_array())
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("name")?.as_str().map(String::from))
        .collect();
    for entry in std::fs::read_dir(root.join("src/bin")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") || path.join("main.rs").exists() {
            names.insert(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    names
}

#[test]
fn every_binary_has_a_page() {
    let paged: BTreeSet<String> = generated_pages()
        .iter()
        .map(|p| p.binary.to_string())
        .collect();
    for bin in binaries() {
        assert!(
            paged.contains(&bin),
            "binary {bin} has no man page: add its clap Command to generated_pages() in \
             tests/man_pages.rs, write man/extra/{bin}.roff (ENVIRONMENT, EXAMPLES, SEE ALSO), \
             then run\n    {REFRESH}"
        );
    }
}

/// Every long flag (and visible alias) of `cmd` and its subcommands.
fn long_flags(cmd: &clap::Command, out: &mut BTreeSet<String>) {
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        out.extend(arg.get_long().map(String::from));
        out.extend(
            arg.get_visible_aliases()
                .into_iter()
                .flatten()
                .map(String::from),
        );
    }
    for sub in cmd.get_subcommands() {
        long_flags(sub, out);
    }
}

#[test]
fn every_flag_subcommand_and_variable_is_on_its_page() {
    for page in generated_pages() {
        let file = page.file();
        let roff = committed(&file);
        let text = plain(&roff);
        let mut cmd = page.cmd.clone().disable_help_subcommand(true);
        cmd.build();
        let mut flags = BTreeSet::new();
        long_flags(&cmd, &mut flags);
        for flag in flags {
            let word = format!("--{flag}");
            // Whole words only: --json must not be found inside --json-lines.
            let found = text.match_indices(&word).any(|(i, _)| {
                !text[i + word.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '-')
            });
            assert!(found, "{file} lacks {word}");
        }
        let sections = sections(&roff);
        for sub in cmd.get_subcommands() {
            assert!(
                sections.contains_key(sub.get_name()),
                "{file} has no subsection for {}",
                sub.get_name()
            );
        }
        // Variables must be explained in ENVIRONMENT, not only named by an option.
        let env = plain(
            &sections
                .get("ENVIRONMENT")
                .cloned()
                .unwrap_or_default()
                .join("\n"),
        );
        let mut vars = BTreeSet::new();
        fn env_vars(cmd: &clap::Command, out: &mut BTreeSet<String>) {
            for arg in cmd.get_arguments() {
                out.extend(arg.get_env().map(|v| v.to_string_lossy().into_owned()));
            }
            cmd.get_subcommands().for_each(|s| env_vars(s, out));
        }
        env_vars(&cmd, &mut vars);
        for var in vars {
            assert!(
                env.contains(&var),
                "{file}: ENVIRONMENT does not explain {var}"
            );
        }
    }
}

// ---- ipchub.toml(5) against the config tree ----

/// A config with every optional key set and every array of tables holding
/// one entry, so serialising it shows every key. A key this leaves out fails
/// `config_page_documents_every_key` with a message saying so.
fn full_sample() -> Config {
    let mut c = Config::default();
    c.fifo.publish_channels.push("weather".into());
    c.access.rule.push(AccessRule {
        pattern: "secure/#".into(),
        publish: vec!["user:root".into()],
        subscribe: vec!["*".into()],
    });
    let m = &mut c.bridge.mqtt.list[0];
    m.username = Some("ipchub".into());
    m.password = Some("secret".into());
    m.ca_file = Some("/etc/ipchub/ca.pem".into());
    m.cert_file = Some("/etc/ipchub/client.pem".into());
    m.key_file = Some("/etc/ipchub/client.key".into());
    m.exports.push(MqttExport {
        pattern: "sensors/#".into(),
        prefix: "ipchub/".into(),
        qos: 2,
        retain: Some(true),
    });
    m.imports.push(MqttImport {
        filter: "commands/#".into(),
        prefix: "mqtt/".into(),
        qos: 0,
        retain: Some(false),
    });
    c.spawn.push(SpawnConfig {
        name: "uppercase".into(),
        command: vec!["/usr/bin/tr".into(), "a-z".into(), "A-Z".into()],
        stdin_channel: Some("text/in".into()),
        stdout_channel: Some("text/out".into()),
        restart: Restart::Never,
        restart_delay_ms: 5,
    });
    c.channels.push(ChannelRule {
        pattern: "logs/#".into(),
        overflow: Some(Overflow::DropOldest),
        retain: Some(true),
        history_messages: Some(10),
        history_bytes: Some(4096),
        history_age: Some("10m".into()),
        storage: Some(ipchub::config::Storage::Disk),
        sync: Some(ipchub::config::Sync::Always),
    });
    c
}

#[derive(Debug, PartialEq)]
enum KeyDefault {
    Value(toml::Value),
    /// Optional, and absent unless set.
    Unset,
    Required,
}

/// One key of the file as the code defines it.
#[derive(Debug)]
struct Key {
    /// The page's heading for its table: `[hub]`, `[[spawn]]`.
    table: String,
    name: String,
    /// A value of the key's type.
    example: toml::Value,
    default: KeyDefault,
}

/// The field names serde accepts in the table at `path`, read from the
/// error that an unknown key provokes (deny_unknown_fields lists them), so
/// a field the sample forgot cannot hide.
fn fields_of(path: &[String], array: bool) -> Vec<String> {
    const PROBE: &str = "zzz_probe";
    let doc = match (path.is_empty(), array) {
        (true, _) => format!("{PROBE} = 1\n"),
        (false, false) => format!("[{}]\n{PROBE} = 1\n", path.join(".")),
        (false, true) => format!("[[{}]]\n{PROBE} = 1\n", path.join(".")),
    };
    let err = toml::from_str::<Config>(&doc).unwrap_err().to_string();
    let marker = format!("unknown field `{PROBE}`, expected ");
    let Some(at) = err.find(&marker) else {
        if err.contains(&format!("unknown field `{PROBE}`, there are no fields")) {
            return Vec::new();
        }
        panic!("cannot list the keys of {path:?}: {err}");
    };
    let list = err[at + marker.len()..].lines().next().unwrap_or("");
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let v = table.get(first)?;
    if rest.is_empty() {
        return Some(v);
    }
    match v {
        toml::Value::Table(t) => lookup(t, rest),
        toml::Value::Array(a) => lookup(a.first()?.as_table()?, rest),
        _ => None,
    }
}

/// The default of `field` in the array of tables at `path`: drop the field
/// from the sample's entry and see what deserialising fills in.
fn array_field_default(path: &[String], field: &str) -> KeyDefault {
    let mut doc = toml::Table::try_from(full_sample()).unwrap();
    let mut entry: &mut toml::Table = &mut doc;
    for (i, p) in path.iter().enumerate() {
        let v = entry.get_mut(p).unwrap();
        entry = if i + 1 == path.len() {
            v.as_array_mut().unwrap()[0].as_table_mut().unwrap()
        } else {
            v.as_table_mut().unwrap()
        };
    }
    entry.remove(field);
    match toml::Value::Table(doc).try_into::<Config>() {
        Err(_) => KeyDefault::Required,
        Ok(cfg) => {
            let back = toml::Table::try_from(cfg).unwrap();
            let mut full = path.to_vec();
            full.push(field.to_string());
            lookup(&back, &full).map_or(KeyDefault::Unset, |v| KeyDefault::Value(v.clone()))
        }
    }
}

fn config_keys() -> Vec<Key> {
    let sample = toml::Table::try_from(full_sample()).unwrap();
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    let mut keys = Vec::new();
    let mut todo: Vec<(Vec<String>, bool)> = vec![(Vec::new(), false)];
    while let Some((path, array)) = todo.pop() {
        let heading = if array {
            format!("[[{}]]", path.join("."))
        } else {
            format!("[{}]", path.join("."))
        };
        for field in fields_of(&path, array) {
            let mut full = path.clone();
            full.push(field.clone());
            let example = lookup(&sample, &full).cloned().unwrap_or_else(|| {
                panic!(
                    "full_sample() in tests/man_pages.rs leaves {heading} {field} unset: \
                     give it a value so its documentation is checked"
                )
            });
            match &example {
                toml::Value::Table(_) => todo.push((full, false)),
                toml::Value::Array(a) if a.first().is_some_and(|v| v.is_table()) => {
                    todo.push((full, true))
                }
                _ => {
                    let default = if array {
                        array_field_default(&path, &field)
                    } else {
                        lookup(&defaults, &full)
                            .map_or(KeyDefault::Unset, |v| KeyDefault::Value(v.clone()))
                    };
                    keys.push(Key {
                        table: heading.clone(),
                        name: field,
                        example,
                        default,
                    });
                }
            }
        }
    }
    keys
}

/// A key's entry on the page: `key = default (type, …)` or `key (type, …)`.
struct Entry {
    value: Option<String>,
    note: String,
}

fn parse_entry(tag: &str) -> (String, Entry) {
    let (name, rest) = tag.split_once(' ').unwrap_or((tag, ""));
    let (value, note) = match rest
        .rfind(" (")
        .or_else(|| rest.starts_with('(').then_some(0))
    {
        Some(i) => (rest[..i].trim(), rest[i..].trim()),
        None => (rest.trim(), ""),
    };
    let value = value.strip_prefix("= ").map(|v| v.trim().to_string());
    let note = note
        .trim_start_matches('(')
        .trim_end_matches(')')
        .to_string();
    (name.to_string(), Entry { value, note })
}

#[test]
fn config_page_documents_every_key() {
    let roff = committed("ipchub.toml.5");
    let page: BTreeMap<String, BTreeMap<String, Entry>> = sections(&roff)
        .into_iter()
        .filter(|(h, _)| h.starts_with('['))
        .map(|(h, lines)| (h, tags(&lines).iter().map(|t| parse_entry(t)).collect()))
        .collect();
    let keys = config_keys();
    let mut problems = Vec::new();
    for key in &keys {
        let Some(entry) = page.get(&key.table).and_then(|t| t.get(&key.name)) else {
            problems.push(format!("{} {} is not documented", key.table, key.name));
            continue;
        };
        let what = format!("{} {}", key.table, key.name);
        if !entry.note.starts_with(key.example.type_str()) {
            problems.push(format!(
                "{what}: type should read ({}…), page says ({})",
                key.example.type_str(),
                entry.note
            ));
        }
        match (&key.default, &entry.value) {
            (KeyDefault::Value(d), Some(v)) => {
                let parsed = toml::from_str::<toml::Table>(&format!("v = {v}"))
                    .ok()
                    .and_then(|mut t| t.remove("v"));
                if parsed.as_ref() != Some(d) {
                    problems.push(format!("{what}: page gives default {v}, code has {d}"));
                }
            }
            (KeyDefault::Value(d), None) => {
                problems.push(format!("{what}: page does not give the default {d}"))
            }
            (KeyDefault::Required, v) if v.is_some() || !entry.note.contains("required") => {
                problems.push(format!("{what}: required, page should say (…, required)"))
            }
            (KeyDefault::Unset, Some(v)) => {
                problems.push(format!("{what}: has no default, page gives {v}"))
            }
            _ => {}
        }
    }
    let documented: BTreeSet<(&String, &String)> =
        keys.iter().map(|k| (&k.table, &k.name)).collect();
    for (table, entries) in &page {
        for name in entries.keys() {
            if !documented.contains(&(table, name)) {
                problems.push(format!("{table} {name} is on the page but not in the code"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "man/ipchub.toml.5 disagrees with crates/daemon/src/config.rs:\n  {}",
        problems.join("\n  ")
    );
}

// ---- ipchub-protocol(7) against the wire format ----

/// `StatsRequest` → `STATS_REQUEST`.
fn wire_name(debug: &str) -> String {
    let mut out = String::new();
    for (i, c) in debug.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The `N NAME` pairs a section lists as `.TP` tags.
fn numbered(sections: &BTreeMap<String, Vec<String>>, heading: &str) -> BTreeSet<(u32, String)> {
    let lines = sections
        .get(heading)
        .unwrap_or_else(|| panic!("ipchub-protocol.7 has no section {heading}"));
    tags(lines)
        .iter()
        .filter_map(|t| {
            let mut words = t.split_whitespace();
            Some((words.next()?.parse().ok()?, words.next()?.to_string()))
        })
        .collect()
}

#[test]
fn protocol_page_lists_every_frame_type_error_code_and_transport() {
    let roff = committed("ipchub-protocol.7");
    let sections = sections(&roff);
    let frames: BTreeSet<(u32, String)> = (0..=u8::MAX)
        .filter_map(FrameType::from_u8)
        .map(|t| (t as u32, wire_name(&format!("{t:?}"))))
        .collect();
    assert_eq!(
        numbered(&sections, "FRAME TYPES"),
        frames,
        "ipchub-protocol.7 FRAME TYPES (left) against crates/wire/src/frame.rs"
    );
    let codes: BTreeSet<(u32, String)> = (0..=u16::MAX)
        .filter_map(ErrorCode::from_u16)
        .map(|c| (c as u32, wire_name(&format!("{c:?}"))))
        .collect();
    assert_eq!(
        numbered(&sections, "ERROR CODES"),
        codes,
        "ipchub-protocol.7 ERROR CODES (left) against crates/wire/src/frame.rs"
    );
    let transports: BTreeSet<String> = tags(&sections["TRANSPORTS"])
        .iter()
        .filter_map(|t| t.split_whitespace().next().map(String::from))
        .collect();
    let code: BTreeSet<String> = ipchub::hub::TransportKind::ALL
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    assert_eq!(
        transports, code,
        "ipchub-protocol.7 TRANSPORTS (left) against TransportKind::ALL"
    );
    let text = plain(&roff);
    for fact in [
        format!("{}-byte header", ipchub::wire::HEADER_LEN),
        format!("0..{}", ipchub::wire::frame::MAX_PRIORITY),
        format!("1 to {} bytes", ipchub::wire::channel::MAX_CHANNEL_LEN),
        format!("at most {} levels", ipchub::wire::channel::MAX_LEVELS),
    ] {
        assert!(
            text.contains(&fact),
            "ipchub-protocol.7 should say \"{fact}\""
        );
    }
}

// ---- every page, as man(1) and lintian see it ----

#[test]
fn man_reports_no_warnings() {
    update_once();
    let mut files: Vec<PathBuf> = generated_pages()
        .iter()
        .map(|p| man_dir().join(p.file()))
        .collect();
    files.extend(HAND_WRITTEN.iter().map(|(f, _, _)| man_dir().join(f)));
    for file in files {
        // lintian's invocation: groff warnings on, UTF-8, 80 columns.
        let out = std::process::Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z"])
            .arg(&file)
            .env("LC_ALL", "C.UTF-8")
            .env("MANROFFSEQ", "")
            .env("MANWIDTH", "80")
            .output_within(LIMIT)
            .unwrap_or_else(|e| {
                panic!("cannot run man ({e}): install man-db (apt-get install man-db)")
            });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "man --warnings {}: {}\n{stderr}",
            file.display(),
            out.status
        );
    }
}
