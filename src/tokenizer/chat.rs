//! Chat-template rendering with minijinja, as transformers renders templates.
//!
//! transformers renders with a jinja2 sandbox set up with `trim_blocks`, `lstrip_blocks`, loop controls,
//! its own `tojson` (no HTML escaping, `json.dumps` layout), `raise_exception` and `strftime_now`.
//! Templates from the Hub are written against that environment, so this one reproduces it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

const TEMPLATE_NAME: &str = "chat_template";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The roles a chat may use: what chat templates render and what training locates spans of.
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// The one chat policy, applied wherever chats come in (training data, screening, monitoring,
/// the server): at least one message, every role one of [`ROLES`], a system message only first.
pub fn check_chat(messages: &[ChatMessage]) -> Result<()> {
    anyhow::ensure!(!messages.is_empty(), "\"messages\" is empty");
    for (j, m) in messages.iter().enumerate() {
        anyhow::ensure!(
            ROLES.contains(&m.role.as_str()),
            "messages[{j}].role is {:?} (expected system, user or assistant)",
            m.role
        );
        anyhow::ensure!(
            m.role != "system" || j == 0,
            "messages[{j}]: a system message may only come first"
        );
    }
    Ok(())
}

/// One JSONL chat line, `{"messages": [{"role": ..., "content": ...}, ...]}`, checked by
/// [`check_chat`]. Other keys of the line (ids, labels) are ignored; a message holds `role` and
/// `content` only. Callers add `file:line` and their own rules.
pub fn parse_chat_line(line: &str) -> Result<Vec<ChatMessage>> {
    #[derive(serde::Deserialize)]
    struct Line {
        messages: Vec<Message>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Message {
        role: String,
        content: String,
    }
    let line: Line = serde_json::from_str(line).map_err(|e| {
        anyhow::anyhow!(
            "expected {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}: {e}"
        )
    })?;
    let messages: Vec<ChatMessage> = line
        .messages
        .into_iter()
        .map(|m| ChatMessage::new(m.role, m.content))
        .collect();
    check_chat(&messages)?;
    Ok(messages)
}

/// The special-token strings transformers passes to every render (`special_tokens_map`).
#[derive(Debug, Clone, Default)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
    pub pad: Option<String>,
}

/// A compiled chat template with the variables transformers always provides.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    special: SpecialTokens,
    source: String,
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is returned as minijinja reports it (with line numbers).
    pub fn new(source: String, special: SpecialTokens) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.clone())?;
        Ok(Self {
            env,
            special,
            source,
        })
    }

    /// The template's Jinja source, as it was read.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_object(Message(m.clone())))
            .collect();
        let mut ctx: BTreeMap<&str, Value> = BTreeMap::new();
        ctx.insert("messages", Value::from(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        // transformers passes these as None when absent, and templates test `tools is not none`,
        // which an undefined value would pass.
        ctx.insert("tools", Value::from(()));
        ctx.insert("documents", Value::from(()));
        let special = [
            ("bos_token", &self.special.bos),
            ("eos_token", &self.special.eos),
            ("unk_token", &self.special.unk),
            ("pad_token", &self.special.pad),
        ];
        for (name, token) in special {
            if let Some(token) = token {
                ctx.insert(name, Value::from(token.as_str()));
            }
        }
        Ok(self.env.get_template(TEMPLATE_NAME)?.render(ctx)?)
    }
}

/// A message as a map that keeps `role` before `content`: minijinja's own maps are sorted, and
/// `tojson` or `message.items()` in a template must list keys in the order Python's dicts do.
#[derive(Debug)]
struct Message(ChatMessage);

impl Object for Message {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.0.role.as_str())),
            "content" => Some(Value::from(self.0.content.as_str())),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
/// minijinja's built-in escapes `<`, `>`, `&` and `'` for HTML, which would change the prompt.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair",
            ))
        }
        // Python drops the space after ',' when indenting, since the newline separates items.
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let json = Json {
        indent,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
        item_sep,
        key_sep,
    };
    let mut out = String::new();
    json.write(&mut out, &value, 0)?;
    Ok(Value::from(out))
}

struct Json {
    indent: Option<usize>,
    sort_keys: bool,
    ensure_ascii: bool,
    item_sep: String,
    key_sep: String,
}

impl Json {
    fn write(&self, out: &mut String, value: &Value, depth: usize) -> Result<(), Error> {
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => self.write_number(out, value)?,
            ValueKind::String => self.write_str(out, value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.write_container(out, ('[', ']'), &items, depth, |out, item| {
                    self.write(out, item, depth + 1)
                })?;
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((key.to_string(), item));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.write_container(out, ('{', '}'), &entries, depth, |out, (key, item)| {
                    self.write_str(out, key);
                    out.push_str(&self.key_sep);
                    self.write(out, item, depth + 1)
                })?;
            }
            kind => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: a value of type {kind} is not JSON serializable"),
                ))
            }
        }
        Ok(())
    }

    fn write_container<T>(
        &self,
        out: &mut String,
        (open, close): (char, char),
        items: &[T],
        depth: usize,
        mut write_item: impl FnMut(&mut String, &T) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            self.newline(out, depth + 1);
            write_item(out, item)?;
        }
        if !items.is_empty() {
            self.newline(out, depth);
        }
        out.push(close);
        Ok(())
    }

    fn newline(&self, out: &mut String, depth: usize) {
        if let Some(indent) = self.indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', indent * depth));
        }
    }

    fn write_number(&self, out: &mut String, value: &Value) -> Result<(), Error> {
        if value.is_integer() {
            let _ = write!(out, "{}", i128::try_from(value.clone())?);
            return Ok(());
        }
        let float = f64::try_from(value.clone())?;
        // Python's float repr: "1.0", "0.1", "1e-05", "inf" spelled as JSON allows it ("Infinity").
        if float.is_nan() {
            out.push_str("NaN");
        } else if float.is_infinite() {
            out.push_str(if float > 0.0 { "Infinity" } else { "-Infinity" });
        } else {
            let _ = write!(out, "{float:?}");
        }
        Ok(())
    }

    /// Python's `json.dumps` escapes: the short forms, other control characters as `\u00XX`, and with
    /// `ensure_ascii` everything outside printable ASCII as UTF-16 code units.
    fn write_str(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if c < ' ' || (self.ensure_ascii && c > '~') => {
                    for unit in c.encode_utf16(&mut [0; 2]) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Python's `datetime.now().strftime(format)`, in UTC (the time zone a container runs in; Rust's
/// std has no time-zone database). Templates use it for "today's date" in system prompts.
fn strftime_now(format: String) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(&format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

fn strftime(format: &str, unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    // 1970-01-01 was a Thursday.
    let weekday = ((days + 4) % 7) as usize;
    let month_name = MONTHS[(month - 1) as usize];
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year % 100),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('e') => write!(out, "{day:2}"),
            Some('H') => write!(out, "{hour:02}"),
            Some('I') => write!(out, "{hour12:02}"),
            Some('M') => write!(out, "{minute:02}"),
            Some('S') => write!(out, "{second:02}"),
            Some('p') => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            Some('B') => write!(out, "{month_name}"),
            Some('b') => write!(out, "{}", &month_name[..3]),
            Some('A') => write!(out, "{}", WEEKDAYS[weekday]),
            Some('a') => write!(out, "{}", &WEEKDAYS[weekday][..3]),
            Some('j') => write!(out, "{:03}", day_of_year(year, month, day)),
            Some('%') => write!(out, "%"),
            // glibc, which Python defers to, prints codes it does not know as they are.
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn day_of_year(year: u64, month: u64, day: u64) -> u64 {
    const BEFORE: [u64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
    BEFORE[(month - 1) as usize] + day + u64::from(leap && month > 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[ChatMessage]) -> String {
        ChatTemplate::new(source.into(), SpecialTokens::default())
            .unwrap()
            .render(messages, false)
            .unwrap()
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let messages = [ChatMessage::new("user", "<a & 'b'>\n\"é\"")];
        assert_eq!(
            render("{{ messages[0] | tojson }}", &messages),
            r#"{"role": "user", "content": "<a & 'b'>\n\"é\""}"#
        );
        assert_eq!(
            render("{{ messages | tojson(indent=2) }}", &messages),
            "[\n  {\n    \"role\": \"user\",\n    \"content\": \"<a & 'b'>\\n\\\"é\\\"\"\n  }\n]"
        );
        assert_eq!(
            render("{{ {'b': 1, 'a': [1.5, 2.0, none, true]} | tojson(sort_keys=true, ensure_ascii=true) }}", &[]),
            r#"{"a": [1.5, 2.0, null, true], "b": 1}"#
        );
        assert_eq!(
            render("{{ 'é😀' | tojson(ensure_ascii=true) }}", &[]),
            r#""\u00e9\ud83d\ude00""#
        );
    }

    #[test]
    fn python_methods_and_whitespace_control() {
        let messages = [ChatMessage::new("user", "  Hi  ")];
        let source = "{% for m in messages %}\n  {{ m.role.upper() }}:{{ m['content'].strip() }}\n{% endfor %}\n";
        assert_eq!(render(source, &messages), "  USER:Hi\n");
        assert_eq!(
            render(
                "{% for k, v in messages[0].items() %}{{ k }}={{ v }};{% endfor %}",
                &messages
            ),
            "role=user;content=  Hi  ;"
        );
    }

    #[test]
    fn raise_exception_reports_message() {
        let template = ChatTemplate::new(
            "{{ raise_exception('Conversation roles must alternate') }}".into(),
            SpecialTokens::default(),
        )
        .unwrap();
        let err = template.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("Conversation roles must alternate"), "{err}");
    }

    #[test]
    fn strftime_formats() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", t), "2024-02-29 13:05:09");
        assert_eq!(
            strftime("%d %b %Y, %A %a %B %j %I%p %y %% %Q", t),
            "29 Feb 2024, Thursday Thu February 060 01PM 24 % %Q"
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }
}
