//! Chat templates: the Jinja a model ships in its tokenizer config, rendered as transformers'
//! `apply_chat_template` renders it.
use super::Message;
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error as JError, ErrorKind};

/// The most work a chat template may do (minijinja's fuel: about one unit per instruction; a real
/// template spends a few hundred per message) and the most text it may write. A template from a
/// model folder is code: past either bound it ends in an error instead of running unbounded.
pub const TEMPLATE_FUEL: u64 = 20_000_000;
pub const TEMPLATE_MAX_BYTES: usize = 64 << 20;
/// How deep templates may nest calls and includes (minijinja's default is 500).
pub const TEMPLATE_RECURSION: usize = 100;

/// HF's `_compile_jinja_template`: trim_blocks, lstrip_blocks, loop controls, Python string
/// methods (minijinja-contrib pycompat), `raise_exception`, `strftime_now`, and a `tojson` that
/// prints like Python's `json.dumps(x, ensure_ascii=False)`; bounded by [`TEMPLATE_FUEL`],
/// [`TEMPLATE_MAX_BYTES`] and [`TEMPLATE_RECURSION`].
pub(super) fn render<'a>(
    tpl: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    specials: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<String, JError> {
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_recursion_limit(TEMPLATE_RECURSION);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, JError> {
        Err(JError::new(ErrorKind::InvalidOperation, format!("raise_exception: {msg}")))
    });
    env.add_function("strftime_now", |fmt: String| -> Result<Value, JError> { Ok(Value::from(strftime_now(&fmt))) });
    env.add_filter("tojson", tojson);
    let t = env.template_from_str(tpl)?;
    let mut ctx = std::collections::BTreeMap::<&str, Value>::new();
    ctx.insert("messages", Value::from_serialize(messages));
    ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
    ctx.insert("tools", Value::from(()));
    ctx.insert("documents", Value::from(()));
    for (k, v) in specials {
        if let Some(v) = v {
            ctx.insert(k, Value::from(v));
        }
    }
    let mut out = Bounded { buf: Vec::new(), max: TEMPLATE_MAX_BYTES, overflowed: false };
    if let Err(e) = t.render_captured_to(ctx, &mut out) {
        return Err(if out.overflowed {
            JError::new(ErrorKind::InvalidOperation, format!("the chat template's output passed {} MB", TEMPLATE_MAX_BYTES >> 20))
        } else {
            e
        });
    }
    String::from_utf8(out.buf).map_err(|e| JError::new(ErrorKind::BadSerialization, e.to_string()))
}

/// A writer that refuses to grow past `max` bytes.
struct Bounded {
    buf: Vec<u8>,
    max: usize,
    overflowed: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > self.max {
            self.overflowed = true;
            return Err(std::io::Error::other(format!("the chat template's output passed {} MB", self.max >> 20)));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// HF's `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(v: Value, kwargs: Kwargs) -> Result<Value, JError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&v, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) -> Result<(), JError> {
    let nl = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&py_float(f));
            }
        }
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default();
            out.push_str(&serde_json::to_string(s).map_err(|e| JError::new(ErrorKind::BadSerialization, e.to_string()))?);
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, depth + 1);
                write_json(x, indent, depth + 1, out)?;
            }
            nl(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, depth + 1);
                write_json(&Value::from(k.to_string()), None, 0, out)?;
                out.push_str(": ");
                write_json(&v.get_item(k)?, indent, depth + 1, out)?;
            }
            nl(out, depth);
            out.push('}');
        }
        _ => {
            let s = v.to_string();
            out.push_str(&serde_json::to_string(&s).map_err(|e| JError::new(ErrorKind::BadSerialization, e.to_string()))?);
        }
    }
    Ok(())
}

/// Python's `repr(float)` for the common cases: `1.0`, `0.5`, `1e-05`, `inf` as `Infinity`.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Python: 1e-05, 1.5e+20
        let s = format!("{f:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

/// HF's `strftime_now(fmt)`: the current UTC date and time. Supports %Y %y %m %d %B %b %H %M %S %%.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] =
        ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('B') => out.push_str(month),
            Some('b') => out.push_str(&month[..3]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A template from a model folder is code: nested loops that would run 10^10 iterations, an
    /// output of gigabytes and unbounded recursion each end in an error within seconds.
    #[test]
    fn hostile_templates_end_in_errors_not_hangs() {
        let msgs = [Message { role: "user".into(), content: "hi".into() }];
        let t0 = std::time::Instant::now();
        let loops = "{% for a in range(10000) %}{% for b in range(10000) %}{% for c in range(100) %}x{% endfor %}{% endfor %}{% endfor %}";
        let err = render(loops, &msgs, false, []).unwrap_err().to_string();
        assert!(err.contains("fuel"), "{err}");
        let big = "{% set s = range(10000)|join %}{% for i in range(10000) %}{{ s }}{% endfor %}";
        let err = render(big, &msgs, false, []).unwrap_err().to_string();
        assert!(err.contains("output passed 64 MB"), "{err}");
        let deep = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        let err = render(deep, &msgs, false, []).unwrap_err().to_string();
        assert!(err.contains("recursion"), "{err}");
        assert!(t0.elapsed() < std::time::Duration::from_secs(20), "took {:?}", t0.elapsed());
    }

    #[test]
    fn tojson_prints_like_python_json_dumps() {
        let v = Value::from_serialize(serde_json::json!({"b": [1, 2.5, "é\n\"x\""], "a": null, "c": {}}));
        let mut s = String::new();
        write_json(&v, None, 0, &mut s).unwrap();
        // minijinja maps from serde_json are key-sorted; Python keeps insertion order.
        assert_eq!(s, r#"{"a": null, "b": [1, 2.5, "é\n\"x\""], "c": {}}"#);
        let mut s = String::new();
        write_json(&Value::from_serialize(serde_json::json!({"k": [1, true]})), Some(2), 0, &mut s).unwrap();
        assert_eq!(s, "{\n  \"k\": [\n    1,\n    true\n  ]\n}");
        assert_eq!(py_float(1e-5), "1e-05");
        assert_eq!(py_float(3.0), "3.0");
    }

    #[test]
    fn renders_python_style_templates() {
        let tpl = "{% for m in messages %}{{ m['role'].upper() }}:{{ m.content.strip() }}{% if not loop.last %}|{% endif %}{% endfor %}\n";
        let msgs = [Message::user("  hi "), Message::assistant("yo")];
        assert_eq!(render(tpl, &msgs, false, []).unwrap(), "USER:hi|ASSISTANT:yo");
        let err = render("{{ raise_exception('no system role') }}", &msgs, false, []).unwrap_err();
        assert!(format!("{err:#}").contains("no system role"), "{err:#}");
        let date = render("{{ strftime_now('%d %b %Y') }}", &msgs, false, []).unwrap();
        assert_eq!(date.len(), 11, "{date}");
    }

    #[test]
    fn the_bundled_gemma_turn_template_renders_gemma_turns() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/chat-templates/gemma-turns.jinja");
        let tpl = std::fs::read_to_string(path).unwrap();
        let msgs = [Message::system("Be brief."), Message::user(" Hi "), Message::assistant("Hello.")];
        let out = render(&tpl, &msgs, false, [("bos_token", Some("<bos>"))]).unwrap();
        assert_eq!(out, "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n");
        let out = render(&tpl, &msgs[1..2], true, [("bos_token", Some("<bos>"))]).unwrap();
        assert_eq!(out, "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n");
    }
}
