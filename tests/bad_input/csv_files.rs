//! CSV files: rows that do not parse, labels, files that are not text.

use std::path::Path;

use portagrad::io::csv::{parse_csv, read_csv};
use portagrad::train::Dataset;

use crate::{Corpus, ensure, err, ok, tmp_dir};

/// CSV texts that must not parse, each with the words its error must contain.
fn bad_csv_texts() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        (
            "header only with one column",
            "y\n0\n1\n".into(),
            vec!["bad.csv"],
        ),
        (
            "NaN feature",
            "a,y\nNaN,0\n1,1\n".into(),
            vec!["line 2", "column 1"],
        ),
        ("-inf feature", "a,y\n-inf,0\n1,1\n".into(), vec!["line 2"]),
        (
            "1e39 overflows f32",
            "a,y\n1e39,0\n1,1\n".into(),
            vec!["line 2"],
        ),
        (
            "empty feature cell",
            "a,b,y\n1,,0\n1,2,1\n".into(),
            vec!["line 2", "column 2"],
        ),
        ("empty label cell", "a,y\n1,\n2,1\n".into(), vec!["line 2"]),
        (
            "too many fields",
            "a,y\n1,0,5\n2,1\n".into(),
            vec!["line 2", "3 fields"],
        ),
        (
            "quote inside a number",
            "a,y\n\"1\"2,0\n2,1\n".into(),
            vec!["line 2"],
        ),
        ("NUL byte", "a,y\n1\0,0\n2,1\n".into(), vec!["line 2"]),
        (
            "sklearn header negative count",
            "-2,2,a,b\n1,2,0\n3,4,1\n".into(),
            vec!["bad.csv"],
        ),
        (
            "sklearn header zero features",
            "2,0,a,b\n0\n1\n".into(),
            vec!["bad.csv"],
        ),
        (
            "sklearn header with 10^10 features",
            "5,9999999999,a,b\n1,2,0\n".into(),
            vec!["line 1", "9999999999 features"],
        ),
        (
            "sklearn header huge count",
            "99999999999999999999,2,a,b\n1,2,0\n3,4,1\n".into(),
            vec!["bad.csv"],
        ),
        (
            "sklearn header one class",
            "2,2,a\n1,2,0\n3,4,0\n".into(),
            vec!["bad.csv"],
        ),
        (
            "sklearn non-integer label",
            "2,2,a,b\n1,2,0.5\n3,4,1\n".into(),
            vec!["line 2"],
        ),
        (
            "a single line of garbage",
            "\u{feff}\u{feff}\r\r".into(),
            vec!["bad.csv"],
        ),
        ("only quotes", "\"\"\"\n\"\"\"\n".into(), vec!["bad.csv"]),
        (
            "unnamed class id u32::MAX",
            "2,2\n1,2,0\n3,4,4294967295\n".into(),
            vec!["line 3", "not a class id in 0..65536"],
        ),
        (
            "text after a closing quote",
            "a,y\n\"1\" x,0\n2,1\n".into(),
            vec!["line 2", "closing quote"],
        ),
        (
            "a 100k-column header and one short row",
            format!("{}y\n1,0\n", "a,".repeat(100_000)),
            vec!["line 2"],
        ),
    ]
}

#[test]
fn rows_that_do_not_parse() {
    let mut c = Corpus::new("csv/parse");
    let p = Path::new("bad.csv");
    for (name, text, words) in bad_csv_texts() {
        c.case(&format!("csv: {name}"), || {
            err(parse_csv(p, &text), "InvalidArgument", &words)
        });
    }
    c.finish();
}

#[test]
fn many_labels_and_numeric_labels() {
    let mut c = Corpus::new("csv/labels");
    let p = Path::new("bad.csv");
    c.case("csv: 40k distinct labels parse in linear-ish time", || {
        let mut text = String::from("a,y\n");
        for i in 0..40_000 {
            text.push_str(&format!("{i},l{i}\n"));
        }
        let t0 = std::time::Instant::now();
        let tb = ok(parse_csv(p, &text))?;
        let secs = t0.elapsed().as_secs_f64();
        let want = tb.class_names.iter().position(|n| n == "l123").unwrap() as u32;
        ensure(tb.n_classes() == 40_000 && tb.labels[123] == want, || {
            "labels wrong".into()
        })?;
        ensure(secs < 5.0, || format!("took {secs:.1} s"))
    });
    c.case("csv: numeric labels 0, -0 and 0.0 are one class", || {
        let tb = ok(parse_csv(p, "a,y\n1,0\n2,-0\n3,0.0\n4,1\n"))?;
        ensure(tb.n_classes() == 2 && tb.labels == [0, 0, 0, 1], || {
            format!("{tb:?}")
        })
    });
    c.finish();
}

#[test]
fn files_and_tables() {
    let mut c = Corpus::new("csv/files");
    let p = Path::new("bad.csv");
    let dir = tmp_dir("csv");
    c.case("csv: not UTF-8", || {
        let f = dir.join("latin1.csv");
        std::fs::write(&f, b"a,y\n\xe9,0\n").unwrap();
        err(read_csv(&f), "InvalidArgument", &["UTF-8", "latin1.csv"])
    });
    c.case("csv: a directory", || err(read_csv(&dir), "Io", &[]));
    c.case("csv: Dataset from a table with bad labels", || {
        let mut tb = ok(parse_csv(p, "a,y\n1,0\n2,1\n"))?;
        tb.labels[0] = 9;
        err(Dataset::from_table(&tb), "InvalidArgument", &[])
    });
    c.case("csv: Dataset from a table with ragged features", || {
        let mut tb = ok(parse_csv(p, "a,y\n1,0\n2,1\n"))?;
        tb.features.pop();
        err(Dataset::from_table(&tb), "InvalidArgument", &[])
            .or_else(|_| err(Dataset::from_table(&tb), "Shape", &[]))
    });
    let _ = std::fs::remove_dir_all(&dir);
    c.finish();
}
