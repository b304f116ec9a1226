//! A bounded, non-recursive pass over AMF0 data before `rml_amf0` sees it.
//!
//! `rml_amf0` decodes nested objects and arrays recursively, so a small
//! message of deeply nested objects overflows the stack — an abort that
//! takes the whole process down, which `catch_unwind` cannot stop. This
//! scanner walks the same grammar with an explicit stack and refuses input
//! nested deeper than any real client sends.

/// Deepest nesting of objects/arrays accepted; real metadata is 1–3 deep.
pub const MAX_AMF_DEPTH: usize = 32;

const NUMBER: u8 = 0x00;
const BOOLEAN: u8 = 0x01;
const STRING: u8 = 0x02;
const OBJECT: u8 = 0x03;
const NULL: u8 = 0x05;
const UNDEFINED: u8 = 0x06;
const ECMA_ARRAY: u8 = 0x08;
const OBJECT_END: u8 = 0x09;
const STRICT_ARRAY: u8 = 0x0a;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmfError {
    #[error("AMF0 values nested deeper than {MAX_AMF_DEPTH} levels")]
    TooDeep,
    #[error("AMF0 data ends in the middle of a value")]
    Truncated,
    #[error("unsupported AMF0 type marker {0:#04x}")]
    UnknownMarker(u8),
}

/// What the scan learned about a message's top-level values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmfSummary {
    /// Number of top-level values.
    pub values: usize,
    /// The first top-level value, when it is a string.
    pub first_string: Option<String>,
}

enum Frame {
    /// Inside an object or ECMA array: expecting a property name or the end.
    Object,
    /// Inside a strict array with this many values left.
    Array(u32),
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn take(&mut self, n: usize) -> Result<&[u8], AmfError> {
        let end = self.pos.checked_add(n).ok_or(AmfError::Truncated)?;
        let s = self.data.get(self.pos..end).ok_or(AmfError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, AmfError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, AmfError> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u32(&mut self) -> Result<u32, AmfError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Checks that `data` is a sequence of AMF0 values `rml_amf0` can decode
/// without deep recursion.
pub fn scan(data: &[u8]) -> Result<AmfSummary, AmfError> {
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Frame> = Vec::new();
    let mut summary = AmfSummary {
        values: 0,
        first_string: None,
    };
    loop {
        let marker = match stack.last_mut() {
            None => {
                if r.at_end() {
                    break;
                }
                let m = r.u8()?;
                if m == OBJECT_END {
                    break;
                }
                summary.values += 1;
                if summary.values == 1 && m == STRING {
                    let len = r.u16()?;
                    let text = r.take(len)?;
                    summary.first_string = Some(String::from_utf8_lossy(text).into_owned());
                    continue;
                }
                m
            }
            Some(Frame::Object) => {
                let name_len = r.u16()?;
                if name_len == 0 {
                    if r.u8()? != OBJECT_END {
                        return Err(AmfError::Truncated);
                    }
                    stack.pop();
                    continue;
                }
                r.take(name_len)?;
                let m = r.u8()?;
                if m == OBJECT_END {
                    return Err(AmfError::Truncated);
                }
                m
            }
            Some(Frame::Array(left)) => {
                if *left == 0 || r.at_end() {
                    stack.pop();
                    continue;
                }
                *left -= 1;
                let m = r.u8()?;
                if m == OBJECT_END {
                    stack.pop();
                    continue;
                }
                m
            }
        };
        match marker {
            NUMBER => {
                r.take(8)?;
            }
            BOOLEAN => {
                r.take(1)?;
            }
            STRING => {
                let len = r.u16()?;
                r.take(len)?;
            }
            NULL | UNDEFINED => {}
            OBJECT | ECMA_ARRAY | STRICT_ARRAY => {
                if stack.len() >= MAX_AMF_DEPTH {
                    return Err(AmfError::TooDeep);
                }
                let frame = match marker {
                    OBJECT => Frame::Object,
                    ECMA_ARRAY => {
                        r.u32()?;
                        Frame::Object
                    }
                    _ => Frame::Array(r.u32()?),
                };
                stack.push(frame);
            }
            other => return Err(AmfError::UnknownMarker(other)),
        }
    }
    Ok(summary)
}

/// AMF0 encoders, the writing side of the grammar [`scan`] walks: for RTMP
/// clients built by hand — the connection machine's unit tests and the
/// cross-crate tests' raw client and load generator. The server's own
/// replies are encoded by `rml_rtmp`.
pub mod encode {
    use super::{NULL, NUMBER, OBJECT, OBJECT_END, STRING};

    pub fn number(v: f64) -> Vec<u8> {
        let mut out = vec![NUMBER];
        out.extend_from_slice(&v.to_be_bytes());
        out
    }

    /// A string value (marker 0x02, 16-bit length).
    ///
    /// # Panics
    /// If `s` is longer than 65,535 bytes: the long-string form is not in
    /// the grammar [`super::scan`] accepts, so no client should send one.
    pub fn string(s: &str) -> Vec<u8> {
        let len = u16::try_from(s.len()).expect("an AMF0 string of at most 65,535 bytes");
        let mut out = Vec::with_capacity(s.len() + 3);
        out.push(STRING);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(s.as_bytes());
        out
    }

    pub fn null() -> Vec<u8> {
        vec![NULL]
    }

    /// A command message payload as clients send it: the command's name,
    /// its transaction id, a null command object, then `args`.
    pub fn command(name: &str, transaction: f64, args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = string(name);
        out.extend(number(transaction));
        out.extend(null());
        for arg in args {
            out.extend_from_slice(arg);
        }
        out
    }

    /// An object with string properties.
    pub fn object(props: &[(&str, &str)]) -> Vec<u8> {
        let mut out = vec![OBJECT];
        for (k, v) in props {
            out.extend_from_slice(&(k.len() as u16).to_be_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend(string(v));
        }
        out.extend_from_slice(&[0, 0, OBJECT_END]);
        out
    }

    /// `depth` objects nested inside each other (each `{a: …}`).
    pub fn nested_objects(depth: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(depth * 7);
        for _ in 0..depth {
            out.extend_from_slice(&[OBJECT, 0, 1, b'a']);
        }
        out.push(NULL);
        for _ in 0..depth {
            out.extend_from_slice(&[0, 0, OBJECT_END]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::encode::{nested_objects, string};
    use super::*;

    #[test]
    fn reads_what_the_encoder_writes() {
        let mut m = encode::command("connect", 1.0, &[encode::object(&[("app", "live")])]);
        m.extend(string(&"x".repeat(65_535)));
        let summary = scan(&m).unwrap();
        assert_eq!(summary.values, 5);
        assert_eq!(summary.first_string.as_deref(), Some("connect"));
        assert_eq!(m.len(), 36 + 3 + 65_535);
    }

    #[test]
    fn reads_a_metadata_message() {
        let mut m = string("@setDataFrame");
        m.extend(string("onMetaData"));
        m.push(ECMA_ARRAY);
        m.extend_from_slice(&2u32.to_be_bytes());
        m.extend_from_slice(&[0, 5]);
        m.extend_from_slice(b"width");
        m.push(NUMBER);
        m.extend_from_slice(&1280f64.to_be_bytes());
        m.extend_from_slice(&[0, 6]);
        m.extend_from_slice(b"stereo");
        m.extend_from_slice(&[BOOLEAN, 1]);
        m.extend_from_slice(&[0, 0, OBJECT_END]);
        let s = scan(&m).unwrap();
        assert_eq!(s.values, 3);
        assert_eq!(s.first_string.as_deref(), Some("@setDataFrame"));
    }

    #[test]
    fn accepts_moderate_nesting_and_refuses_deep_nesting() {
        assert!(scan(&nested_objects(MAX_AMF_DEPTH)).is_ok());
        assert_eq!(
            scan(&nested_objects(MAX_AMF_DEPTH + 1)),
            Err(AmfError::TooDeep)
        );
        // ~20 KB of nesting, as an attacker would send: refused quickly.
        assert_eq!(scan(&nested_objects(5000)), Err(AmfError::TooDeep));
        let deep_arrays: Vec<u8> = (0..5000).flat_map(|_| [STRICT_ARRAY, 0, 0, 0, 1]).collect();
        assert_eq!(scan(&deep_arrays), Err(AmfError::TooDeep));
    }

    #[test]
    fn refuses_truncated_and_unknown_values() {
        assert_eq!(scan(&[NUMBER, 1, 2]), Err(AmfError::Truncated));
        assert_eq!(scan(&[STRING, 0, 9, b'a']), Err(AmfError::Truncated));
        assert_eq!(scan(&[OBJECT, 0, 1]), Err(AmfError::Truncated));
        assert_eq!(scan(&[0x11]), Err(AmfError::UnknownMarker(0x11)));
        assert_eq!(scan(&[]).unwrap().values, 0);
    }
}
