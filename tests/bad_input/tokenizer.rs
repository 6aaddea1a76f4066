//! The character tokenizer.

use portagrad::models::CharTokenizer;

use crate::{Corpus, err, ok};

#[test]
fn char_tokenizer_unknown_text_and_ids() {
    let mut c = Corpus::new("tokenizer");
    c.case("char tokenizer encode of an unknown character", || {
        let tok = ok(CharTokenizer::from_text("abc"))?;
        err(tok.encode("abz"), "InvalidArgument", &["z"])
    });
    c.case("char tokenizer decode of an id past the vocabulary", || {
        let tok = ok(CharTokenizer::from_text("abc"))?;
        err(tok.decode(&[0, 3]), "InvalidArgument", &["3"])
    });
    c.case("char tokenizer of empty text", || {
        err(
            CharTokenizer::from_text("").map(|_| ()),
            "InvalidArgument",
            &[],
        )
    });
    c.case(
        "char tokenizer vocab json malformed",
        || match CharTokenizer::from_vocab_json("{not json") {
            None => Ok(()),
            Some(r) => err(r.map(|_| ()), "InvalidArgument", &[]),
        },
    );
    c.finish();
}
