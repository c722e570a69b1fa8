//! The report's blocks written as Markdown (`report.md`, plots linked) and as one self-contained
//! HTML file (`report.html`: plots embedded as base64 PNG, no external references).
use super::document::Block;
use crate::error::Result;
use crate::report::Table;
use std::path::Path;

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

/// Whether every non-empty cell of column `c` reads as a number ("0.5 ± 0.1", "+3", "n/a", "< 0.001").
fn numeric_column(t: &Table, c: usize) -> bool {
    t.rows
        .iter()
        .map(|r| r[c].trim())
        .filter(|v| !v.is_empty())
        .all(|v| v == "n/a" || v.starts_with("< ") || v.starts_with(|ch: char| ch.is_ascii_digit() || ch == '+' || ch == '-' || ch == '.'))
}

fn md_table(t: &Table) -> String {
    let mut s = format!("| {} |\n", t.headers.iter().map(|h| md_escape(h)).collect::<Vec<_>>().join(" | "));
    let align: Vec<&str> = (0..t.headers.len()).map(|c| if numeric_column(t, c) { "---:" } else { "---" }).collect();
    s.push_str(&format!("|{}|\n", align.join("|")));
    for r in &t.rows {
        s.push_str(&format!("| {} |\n", r.iter().map(|c| md_escape(c)).collect::<Vec<_>>().join(" | ")));
    }
    s
}

pub(super) fn to_markdown(blocks: &[Block]) -> String {
    let mut s = String::new();
    for b in blocks {
        match b {
            Block::H(l, t) => s.push_str(&format!("{} {t}\n\n", "#".repeat(*l))),
            Block::P(t) => s.push_str(&format!("{t}\n\n")),
            Block::List(items) => {
                for i in items {
                    s.push_str(&format!("- {i}\n"));
                }
                s.push('\n');
            }
            Block::Table(t) => {
                s.push_str(&md_table(t));
                s.push('\n');
            }
            Block::Figure(f) => {
                let rel = |p: &Path| format!("plots/{}", p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
                s.push_str(&format!("### {}\n\n![{}]({})\n\n{} ([SVG]({}))\n\n", f.title, f.title, rel(&f.png), f.caption, rel(&f.svg)));
            }
        }
    }
    s
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn html_table(t: &Table) -> String {
    let numeric: Vec<bool> = (0..t.headers.len()).map(|c| numeric_column(t, c)).collect();
    let mut s = String::from("<table>\n<thead><tr>");
    for h in &t.headers {
        s.push_str(&format!("<th>{}</th>", html_escape(h)));
    }
    s.push_str("</tr></thead>\n<tbody>\n");
    for r in &t.rows {
        s.push_str("<tr>");
        for (i, c) in r.iter().enumerate() {
            let class = if numeric[i] { " class=\"n\"" } else { "" };
            s.push_str(&format!("<td{class}>{}</td>", html_escape(c)));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</tbody>\n</table>\n");
    s
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for ch in data.chunks(3) {
        let b = [ch[0], *ch.get(1).unwrap_or(&0), *ch.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if ch.len() > 1 { A[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if ch.len() > 2 { A[n as usize & 63] as char } else { '=' });
    }
    out
}

const CSS: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}\
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px}\
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}\
img{max-width:100%;border:1px solid #eee}figure{margin:1.5em 0}figcaption{font-size:0.9em;color:#555}";

pub(super) fn to_html(title: &str, blocks: &[Block]) -> Result<String> {
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        html_escape(title)
    );
    for b in blocks {
        match b {
            Block::H(l, t) => s.push_str(&format!("<h{l}>{}</h{l}>\n", html_escape(t))),
            Block::P(t) => s.push_str(&format!("<p>{}</p>\n", html_escape(t))),
            Block::List(items) => {
                s.push_str("<ul>\n");
                for i in items {
                    s.push_str(&format!("<li>{}</li>\n", html_escape(i)));
                }
                s.push_str("</ul>\n");
            }
            Block::Table(t) => s.push_str(&html_table(t)),
            Block::Figure(f) => {
                let png = std::fs::read(&f.png).map_err(|e| crate::error::Error::io(&f.png, e))?;
                s.push_str(&format!(
                    "<figure>\n<h3>{}</h3>\n<img alt=\"{}\" src=\"data:image/png;base64,{}\">\n<figcaption>{}</figcaption>\n</figure>\n",
                    html_escape(&f.title),
                    html_escape(&f.title),
                    base64(&png),
                    html_escape(&f.caption)
                ));
            }
        }
    }
    s.push_str("</body>\n</html>\n");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_rfc4648_vectors() {
        for (i, o) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn markdown_and_html_tables_escape() {
        let mut t = Table::new(["a", "b"]);
        t.push(vec!["x|y".into(), "<1>".into()]).unwrap();
        assert!(md_table(&t).contains("x\\|y"));
        assert!(html_table(&t).contains("&lt;1&gt;"));
    }
}
