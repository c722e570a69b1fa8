//! Parquet through the `parquet` crate's record API (no arrow): each row becomes a JSON object, then
//! the same validation as JSON Lines applies. Lists (LIST-annotated groups, as pyarrow and HF
//! datasets write them) become JSON lists, structs objects, maps objects; nulls stay null. Rows are
//! numbered from 1 across row groups.
use super::{Origin, RawRecord};
use crate::error::{Error, Result};
use ::parquet::file::reader::SerializedFileReader;
use ::parquet::record::{Field, Row};
use serde_json::{Map, Number, Value};
use std::path::Path;

pub(crate) fn read_records(path: &Path) -> Result<Vec<RawRecord>> {
    // The parquet crate asserts on some corrupt metadata (found by fuzzing): a panic in it is a
    // corrupt file, reported as such.
    std::panic::catch_unwind(|| read_records_unguarded(path)).unwrap_or_else(|p| {
        let msg = crate::error::panic_message(&*p, "");
        Err(Error::parse(path, format!("not a readable Parquet file (the parquet reader failed: {msg})")))
    })
}

fn read_records_unguarded(path: &Path) -> Result<Vec<RawRecord>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| Error::parse(path, format!("not a readable Parquet file: {e}")))?;
    let mut out = Vec::new();
    for (i, row) in reader.into_iter().enumerate() {
        // A decoding failure means a corrupt file, not a malformed record: stop.
        let row = row.map_err(|e| Error::parse(path, format!("row {}: {e}", i + 1)))?;
        out.push((Origin { file: path.to_path_buf(), line: i + 1 }, Ok(row_to_json(&row))));
    }
    Ok(out)
}

fn row_to_json(row: &Row) -> Map<String, Value> {
    row.get_column_iter().map(|(k, v)| (k.clone(), field_to_json(v))).collect()
}

/// Strings, numbers, booleans, lists, structs and maps map to their JSON kind; a binary column
/// without a UTF-8 annotation becomes a string when it is valid UTF-8; other logical types
/// (decimals, dates, timestamps) become the `parquet` crate's display string. Non-finite floats
/// become strings ("NaN", "inf"), which JSON lacks.
fn field_to_json(f: &Field) -> Value {
    let float = |x: f64| Number::from_f64(x).map(Value::Number).unwrap_or_else(|| Value::String(x.to_string()));
    match f {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(x) => Value::from(*x),
        Field::Short(x) => Value::from(*x),
        Field::Int(x) => Value::from(*x),
        Field::Long(x) => Value::from(*x),
        Field::UByte(x) => Value::from(*x),
        Field::UShort(x) => Value::from(*x),
        Field::UInt(x) => Value::from(*x),
        Field::ULong(x) => Value::from(*x),
        Field::Float16(x) => float(f64::from(*x)),
        Field::Float(x) => float(f64::from(*x)),
        Field::Double(x) => float(*x),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::String(f.to_string()),
        },
        Field::Group(r) => Value::Object(row_to_json(r)),
        Field::ListInternal(l) => Value::Array(l.elements().iter().map(field_to_json).collect()),
        Field::MapInternal(m) => Value::Object(
            m.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Field::Str(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (key, field_to_json(v))
                })
                .collect(),
        ),
        other => Value::String(other.to_string()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::{load_preferences, load_prompts, LoadOptions, Text};
    use crate::tokenizer::Message;
    use ::parquet::basic::{Compression, ZstdLevel};
    use ::parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
    use ::parquet::file::properties::WriterProperties;
    use ::parquet::file::writer::SerializedFileWriter;
    use ::parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    /// One leaf column's data, in schema order: values plus definition/repetition levels.
    pub enum Col {
        Str(Vec<&'static str>, Option<Vec<i16>>, Option<Vec<i16>>),
        Long(Vec<i64>),
        Double(Vec<f64>),
    }

    /// An optional UTF-8 column; `None` is null (def level 0).
    pub fn opt_str(vals: &[Option<&'static str>]) -> Col {
        let def = vals.iter().map(|v| v.is_some() as i16).collect();
        Col::Str(vals.iter().flatten().copied().collect(), Some(def), None)
    }

    /// The two leaf columns (content, role) of a pyarrow-style
    /// `optional group X (LIST) { repeated group list { optional group element { optional binary content (UTF8); optional binary role (UTF8) } } }`,
    /// one list of (role, content) per row; a `None` content is a null content.
    pub fn msg_cols(rows: &[&[(&'static str, Option<&'static str>)]]) -> [Col; 2] {
        let (mut content, mut cdef, mut role, mut rdef, mut rep) = (vec![], vec![], vec![], vec![], vec![]);
        for msgs in rows {
            for (j, (r, c)) in msgs.iter().enumerate() {
                rep.push(if j == 0 { 0 } else { 1 });
                role.push(*r);
                rdef.push(4);
                match c {
                    Some(c) => {
                        content.push(*c);
                        cdef.push(4);
                    }
                    None => cdef.push(3),
                }
            }
        }
        [Col::Str(content, Some(cdef), Some(rep.clone())), Col::Str(role, Some(rdef), Some(rep))]
    }

    pub const MSGS: &str = "optional group list_name (LIST) { repeated group list { optional group element { optional binary content (UTF8); optional binary role (UTF8); } } }";

    pub fn write_parquet(path: &Path, schema: &str, compression: Compression, cols: Vec<Col>) {
        let schema = Arc::new(parse_message_type(schema).unwrap());
        let props = Arc::new(WriterProperties::builder().set_compression(compression).build());
        let mut w = SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
        let mut rg = w.next_row_group().unwrap();
        for col in cols {
            let mut cw = rg.next_column().unwrap().expect("more columns than the schema");
            match col {
                Col::Str(v, def, rep) => {
                    let v: Vec<ByteArray> = v.into_iter().map(ByteArray::from).collect();
                    cw.typed::<ByteArrayType>().write_batch(&v, def.as_deref(), rep.as_deref()).unwrap();
                }
                Col::Long(v) => {
                    cw.typed::<Int64Type>().write_batch(&v, None, None).unwrap();
                }
                Col::Double(v) => {
                    cw.typed::<DoubleType>().write_batch(&v, None, None).unwrap();
                }
            }
            cw.close().unwrap();
        }
        assert!(rg.next_column().unwrap().is_none(), "fewer columns than the schema");
        rg.close().unwrap();
        w.close().unwrap();
    }

    fn msgs(name: &str) -> String {
        MSGS.replace("list_name", name)
    }

    #[test]
    fn reads_standard_preferences_snappy() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("std.parquet");
        write_parquet(
            &p,
            "message schema { optional binary prompt (UTF8); required binary chosen (UTF8); required binary rejected (UTF8); }",
            Compression::SNAPPY,
            vec![
                opt_str(&[Some("Q: 1+1?"), None, Some("Q: sky?")]),
                Col::Str(vec![" 2", "A: 4", " blue"], None, None),
                Col::Str(vec![" 3", "A: 5", " blue"], None, None),
            ],
        );
        let opts = LoadOptions { skip_invalid: true };
        let l = load_preferences(&p, &opts).unwrap();
        assert_eq!(l.items.len(), 2);
        assert_eq!(l.items[0].prompt, Some(Text::Plain("Q: 1+1?".into())));
        assert_eq!(l.items[0].chosen, Text::Plain(" 2".into()));
        assert_eq!(l.items[1].prompt, None, "a null prompt is an implicit prompt");
        assert_eq!(l.items[1].origin.to_string(), format!("{}: row 2", p.display()));
        assert_eq!(l.skipped.len(), 1);
        assert_eq!(l.skipped[0].0.line, 3);
        let e = load_preferences(&p, &LoadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("std.parquet: row 3: rejected: identical to chosen"), "{e}");
    }

    #[test]
    fn reads_conversational_preferences_zstd() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("conv.parquet");
        let schema = format!("message schema {{ {} {} {} }}", msgs("prompt"), msgs("chosen"), msgs("rejected"));
        let [pc, pr] = msg_cols(&[&[("system", Some("Be brief.")), ("user", Some("Sky?"))], &[("user", Some("Grass?"))]]);
        let [cc, cr] = msg_cols(&[&[("assistant", Some("Blue."))], &[("assistant", Some("Green."))]]);
        let [rc, rr] = msg_cols(&[&[("assistant", Some("Red."))], &[("assistant", None)]]);
        write_parquet(&p, &schema, Compression::ZSTD(ZstdLevel::default()), vec![pc, pr, cc, cr, rc, rr]);
        let opts = LoadOptions { skip_invalid: true };
        let l = load_preferences(&p, &opts).unwrap();
        assert_eq!(l.items.len(), 1);
        let a = &l.items[0];
        assert_eq!(a.prompt, Some(Text::Chat(vec![Message::system("Be brief."), Message::user("Sky?")])));
        assert_eq!(a.chosen, Text::Chat(vec![Message::assistant("Blue.")]));
        assert_eq!(a.rejected, Text::Chat(vec![Message::assistant("Red.")]));
        assert_eq!(l.skipped[0].1, "rejected[0].content: expected a string, got null");
        assert_eq!(l.skipped[0].0.to_string(), format!("{}: row 2", p.display()));
    }

    #[test]
    fn reads_prompts_with_meta_and_rejects_non_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("prompts.parquet");
        write_parquet(
            &p,
            "message schema { required binary prompt (UTF8); required int64 max_words; required double temp; }",
            Compression::UNCOMPRESSED,
            vec![Col::Str(vec!["Write a haiku.", "Name a color."], None, None), Col::Long(vec![17, 1]), Col::Double(vec![0.5, 1.0])],
        );
        let l = load_prompts(&p, &LoadOptions::default()).unwrap();
        assert_eq!(l.items.len(), 2);
        assert_eq!(l.items[1].prompt, Text::Plain("Name a color.".into()));
        assert_eq!(l.items[0].meta["max_words"], 17);
        assert_eq!(l.items[0].meta["temp"], 0.5);

        let bad = dir.path().join("bad.parquet");
        std::fs::write(&bad, "{\"prompt\": \"hi\"}\n").unwrap();
        let e = load_prompts(&bad, &LoadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("bad.parquet: not a readable Parquet file"), "{e}");
    }

    /// Parquet preference files (plain and conversational, snappy and zstd) and their mutants:
    /// never a panic or a hang, only records or errors.
    #[test]
    fn fuzzed_parquet_never_panics_or_hangs() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
        write_parquet(
            &a,
            "message schema { optional binary prompt (UTF8); required binary chosen (UTF8); required binary rejected (UTF8); }",
            Compression::SNAPPY,
            vec![opt_str(&[Some("Q: 1+1?"), None]), Col::Str(vec![" 2", "A: 4"], None, None), Col::Str(vec![" 3", "A: 5"], None, None)],
        );
        let schema = format!("message schema {{ {} {} {} }}", msgs("prompt"), msgs("chosen"), msgs("rejected"));
        let [pc, pr] = msg_cols(&[&[("system", Some("Be brief.")), ("user", Some("Sky?"))]]);
        let [cc, cr] = msg_cols(&[&[("assistant", Some("Blue."))]]);
        let [rc, rr] = msg_cols(&[&[("assistant", Some("Red."))]]);
        write_parquet(&b, &schema, Compression::ZSTD(ZstdLevel::default()), vec![pc, pr, cc, cr, rc, rr]);
        let corpus = vec![std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap()];
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let secs = std::env::var("R2M_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
        match crate::fuzz::fuzz(crate::fuzz::Target::Parquet, &corpus, std::time::Duration::from_secs_f64(secs), 0x9a, &work) {
            Ok(s) => assert!(s.accepted >= 2 && s.inputs > 2, "{s:?}"),
            Err(f) => panic!("a Parquet input {}: {:?}", f.what, f.input),
        }
    }
}
