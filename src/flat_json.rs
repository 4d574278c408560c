//! One pass over a flat JSON object: the decoder's fast path.
//!
//! Nearly every record is a flat object: members whose values are strings without escapes,
//! numbers, `true`, `false` or `null`. [`members`] reads such an object in a single scan,
//! handing each member whose name is wanted its value's text, and gives up (`None`) on
//! anything else — an escape, a nested object or array, a control character, anything
//! not valid JSON — for the caller to read with serde_json, which then also words the
//! error. So it accepts only what serde_json accepts and yields what serde_json yields for
//! it (the property test below checks both); what it refuses costs a second reading, not
//! a different answer.
//!
//! serde_json's member-by-member visitor cost about 2,300 instructions per trade (a third
//! of decoding); this scan is a tenth of that.

/// The member names a scan looks for. Each has a signature, its length and first and last
/// bytes in one word: comparing signatures rules out nearly every other name without
/// reading either name's bytes, in whatever order a producer writes its members.
#[derive(Clone, Debug)]
pub struct Names {
    names: Vec<String>,
    signatures: Vec<u64>,
}

impl Names {
    /// Looks for `names`, in this order.
    pub fn new(names: Vec<String>) -> Self {
        let signatures = names.iter().map(|n| signature(n.as_bytes())).collect();
        Names { names, signatures }
    }

    /// The names, in the order given.
    pub fn as_slice(&self) -> &[String] {
        &self.names
    }

    /// The index of `name`, if it is one of them.
    fn find(&self, name: &[u8]) -> Option<usize> {
        let wanted = signature(name);
        (0..self.signatures.len())
            .find(|&i| self.signatures[i] == wanted && self.names[i].as_bytes() == name)
    }
}

fn signature(name: &[u8]) -> u64 {
    let edge = |b: Option<&u8>| u64::from(b.copied().unwrap_or(0));
    (name.len() as u64) << 16 | edge(name.first()) << 8 | edge(name.last())
}

/// Reads `text` as one JSON object with nothing but whitespace around it. For each member
/// whose name is `names[i]`, `found(i, raw)` gets the value's JSON text (a later member of
/// the same name comes later, as serde_json's last-wins reading has it). `None`: not a
/// flat object this scan reads (valid JSON or not); `found` may have been called by then.
pub fn members<'a>(
    text: &'a str,
    names: &Names,
    mut found: impl FnMut(usize, &'a str),
) -> Option<()> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return (skip_ws(b, i + 1) == b.len()).then_some(());
    }
    loop {
        let (name, after) = plain_string(b, i)?;
        i = skip_ws(b, after);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let start = i;
        i = value_end(b, i)?;
        if let Some(n) = names.find(&b[name.0..name.1]) {
            found(n, &text[start..i]);
        }
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return (skip_ws(b, i + 1) == b.len()).then_some(()),
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// A string starting at `i` with no escapes or control characters: the byte range of its
/// contents, and the index after its closing quote. Multi-byte UTF-8 sequences never
/// contain a byte below 0x80, so scanning bytes finds only real quotes and backslashes.
fn plain_string(b: &[u8], i: usize) -> Option<((usize, usize), usize)> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let end = start + special(&b[start..])?;
    (b[end] == b'"').then_some(((start, end), end + 1))
}

/// The index of the first quote, backslash or control character in `b`, eight bytes at a
/// time: in a word, the lowest byte flagged by the usual has-zero-byte tests is exact
/// (flags above a true one may be spurious, never below it).
fn special(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut j = 0;
    while let Some(chunk) = b.get(j..j + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let flags = zero_in(x ^ (ONES * u64::from(b'"')))
            | zero_in(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGHS);
        if flags != 0 {
            return Some(j + flags.trailing_zeros() as usize / 8);
        }
        j += 8;
    }
    b[j..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|k| j + k)
}

/// The end of the scalar value starting at `i`: a plain string, a number in JSON's
/// grammar, or a literal. `None` for anything else (objects and arrays included).
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => plain_string(b, i).map(|(_, end)| end),
        b'-' | b'0'..=b'9' => number_end(b, i),
        b't' => literal(b, i, b"true"),
        b'f' => literal(b, i, b"false"),
        b'n' => literal(b, i, b"null"),
        _ => None,
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b[i..].starts_with(word).then_some(i + word.len())
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], mut i: usize| {
        let from = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > from).then_some(i)
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match b.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(b, i)?,
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        i = digits(b, i + 1)?;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        i = digits(b, i)?;
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    use serde_json::value::RawValue;

    fn names() -> Vec<String> {
        ["id", "t", "amount", "s"].map(String::from).to_vec()
    }

    #[test]
    fn names_alike_in_length_and_edges_are_told_apart() {
        let names = Names::new(["ab", "axb", "ayb", "b"].map(String::from).to_vec());
        let got: Vec<_> = ["ayb", "axb", "ab", "b", "azb", "a"]
            .iter()
            .map(|n| names.find(n.as_bytes()))
            .collect();
        assert_eq!(got, [Some(2), Some(1), Some(0), Some(3), None, None]);
    }

    fn fast(text: &str) -> Option<Vec<Option<String>>> {
        let names = Names::new(names());
        let mut slots = vec![None; names.as_slice().len()];
        members(text, &names, |i, raw| slots[i] = Some(raw.to_string()))?;
        Some(slots)
    }

    /// What serde_json reads: the same slots, or an error.
    fn serde(text: &str) -> Result<Vec<Option<String>>, serde_json::Error> {
        struct V(Vec<String>);
        impl<'de> Visitor<'de> for V {
            type Value = Vec<Option<String>>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut slots = vec![None; self.0.len()];
                while let Some(key) = map.next_key::<String>()? {
                    match self.0.iter().position(|n| *n == key) {
                        Some(i) => {
                            slots[i] = Some(map.next_value::<&RawValue>()?.get().to_string())
                        }
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(slots)
            }
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let slots = (&mut de).deserialize_map(V(names()))?;
        de.end()?;
        Ok(slots)
    }

    #[test]
    fn reads_flat_objects_and_leaves_the_rest() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            fast(r#" {"id":"a-1", "t" : 17,"x":null,"amount":-1.5e+3,"s":true} "#),
            Some(vec![s(r#""a-1""#), s("17"), s("-1.5e+3"), s("true")])
        );
        assert_eq!(fast("{}"), Some(vec![None, None, None, None]));
        assert_eq!(
            fast(r#"{"id":"a","id":"b"}"#),
            Some(vec![s(r#""b""#), None, None, None]),
            "the last of repeated names, as serde_json"
        );
        assert_eq!(
            fast(r#"{"s":"héllo ☃"}"#).map(|v| v[3].clone()),
            Some(s(r#""héllo ☃""#))
        );
        for other in [
            r#"{"id":"a\"b"}"#,
            r#"{"x":{"y":1}}"#,
            r#"{"x":[1]}"#,
            r#"{"id":"a","}"#,
            r#"{"id":"a",}"#,
            r#"{"id":01}"#,
            r#"{"id":1.}"#,
            r#"{"id":.5}"#,
            r#"{"id":1e}"#,
            r#"{"id":-}"#,
            r#"{"id":truex}"#,
            r#"{"id":nul}"#,
            "{\"id\":\"a\u{1}\"}",
            r#"{"id":"a"} x"#,
            r#"{"id" "a"}"#,
            r#"{id:1}"#,
            "[1]",
            "",
        ] {
            assert_eq!(fast(other), None, "{other}");
        }
    }

    /// Flat objects in the shape records have.
    fn record() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::strategy::Strategy;
        proptest::collection::vec(
            (
                proptest::sample::select(vec!["id", "t", "amount", "s", "other"]),
                r#""[a-zA-Z0-9 .:é-]{0,12}"|-?(0|[1-9][0-9]{0,20})(\.[0-9]{1,12})?([eE][+-]?[0-9]{1,3})?|true|false|null"#,
                r#"[ \t\n]{0,2}"#,
            ),
            0..8,
        )
        .prop_map(|members| {
            let body: Vec<String> = members
                .iter()
                .map(|(k, v, ws)| format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}"))
                .collect();
            format!("{{{}}}", body.join(","))
        })
    }

    proptest::proptest! {
        /// The word-at-a-time search finds what a byte-at-a-time one finds.
        #[test]
        fn special_finds_the_first_quote_backslash_or_control_byte(
            bytes in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x7f, 0x80, 0xa2, 0xdc, 0xff]),
                0..40,
            )
        ) {
            let naive = bytes.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            proptest::prop_assert_eq!(special(&bytes), naive);
        }

        /// Records are read by the scan, as serde_json reads them.
        #[test]
        fn reads_what_records_look_like(text in record()) {
            let slots = fast(&text);
            proptest::prop_assert!(slots.is_some(), "{:?}", text);
            proptest::prop_assert_eq!(serde(&text).ok(), slots, "{:?}", text);
        }

        /// Whatever the scan reads of a record with a token put in or cut out anywhere,
        /// serde_json reads too, to the same slots.
        #[test]
        fn agrees_with_serde_json_near_records(
            text in record(),
            token in proptest::sample::select(vec![
                "{", "}", "[", "]", ",", ":", " ", "\"", "\\", "\\\"", "\u{1}", "\u{1f}",
                "0", "7", "-", "+", ".", "e", "E", "true", "nul", "x", "\"id\":", "\"t\":1",
            ]),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            cut in proptest::prelude::any::<bool>(),
        ) {
            let bounds: Vec<usize> = (0..=text.len()).filter(|i| text.is_char_boundary(*i)).collect();
            let i = bounds[at.index(bounds.len())];
            let text = if cut {
                let next = bounds.iter().copied().find(|j| *j > i).unwrap_or(i);
                format!("{}{}", &text[..i], &text[next..])
            } else {
                format!("{}{}{}", &text[..i], token, &text[i..])
            };
            if let Some(slots) = fast(&text) {
                let read = serde(&text);
                proptest::prop_assert!(read.is_ok(), "{:?} read, but serde_json refuses it: {:?}", text, read);
                proptest::prop_assert_eq!(read.ok(), Some(slots), "{:?}", text);
            }
        }
    }
}
