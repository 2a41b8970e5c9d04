//! The agent's part of the kernel command line (docs/driver-vms.md, "The storage agent").
//!
//! One `keel.blk=` per client, in client order (the order is the client's index, the byte
//! its doorbell notifications carry):
//!
//! ```text
//! keel.blk=<gpa>,<region_len>,<slots>,<max_data>,<serial>,<start>,<size>,<ro|rw>
//! keel.blkbell=<tty>
//! ```
//!
//! Numbers are decimal or `0x`-prefixed hex. `<gpa>` (page-aligned) and `<region_len>`
//! place the client's forwarding region in the storage VM's physical address space;
//! `<slots>` and `<max_data>` are its [`ForwardGeometry`]; `<serial>` is the virtio-blk
//! serial of the storage VM's disk holding the client's range `[<start>, <start> +
//! <size>)`. `<tty>` names the doorbell: `hvc1` means `/dev/hvc1` (a `/dev/...` path is
//! taken as it is).
//!
//! A malformed `keel.blk=` refuses only its own client: the others keep their indices and
//! are served.

use keel_virtio::forward::{ClientRange, ForwardError, ForwardGeometry};

/// Page size the region's address must be aligned to (arm64 Linux with 4 KiB pages: the
/// `/dev/mem` mapping starts at a page).
pub const PAGE: u64 = 4096;
/// Longest virtio-blk serial (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_SERIAL: usize = 20;
/// Most clients: a doorbell notification is one byte, the client's index.
pub const MAX_CLIENTS: usize = 256;

/// The parameter of one client.
pub const BLK: &str = "keel.blk=";
/// The parameter of the doorbell.
pub const BELL: &str = "keel.blkbell=";

/// One client as the command line describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSpec {
    /// Guest-physical address of the forwarding region (outside the storage VM's RAM).
    pub gpa: u64,
    /// Bytes of the region.
    pub region_len: usize,
    /// Its geometry (checked).
    pub geometry: ForwardGeometry,
    /// virtio-blk serial of the disk holding the client's range.
    pub serial: String,
    /// The client's range of that disk.
    pub range: ClientRange,
}

impl ClientSpec {
    /// `ro` or `rw`.
    pub fn access(&self) -> &'static str {
        if self.range.read_only { "ro" } else { "rw" }
    }
}

/// Why the command line cannot be used (for one client, or for the agent).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// Not eight fields.
    #[error(
        "keel.blk= of client {index} has {got} comma-separated fields, expected 8: \
         <gpa>,<region_len>,<slots>,<max_data>,<serial>,<start>,<size>,<ro|rw>"
    )]
    FieldCount {
        /// The client.
        index: usize,
        /// Fields found.
        got: usize,
    },
    /// A number field is not a number.
    #[error(
        "keel.blk= of client {index}: {field} {text:?} is not a number (decimal, or hex with 0x)"
    )]
    Number {
        /// The client.
        index: usize,
        /// The field's name.
        field: &'static str,
        /// What it says.
        text: String,
    },
    /// The region's address is not page-aligned.
    #[error("keel.blk= of client {index}: gpa {gpa:#x} is not a multiple of {PAGE:#x}")]
    Unaligned {
        /// The client.
        index: usize,
        /// The address.
        gpa: u64,
    },
    /// The region wraps around the address space.
    #[error("keel.blk= of client {index}: region {gpa:#x}+{len:#x} wraps around")]
    RegionWraps {
        /// The client.
        index: usize,
        /// The address.
        gpa: u64,
        /// The length.
        len: u64,
    },
    /// The geometry is unusable or the region too short for it.
    #[error("keel.blk= of client {index}: {source}")]
    Geometry {
        /// The client.
        index: usize,
        /// What is wrong.
        source: ForwardError,
    },
    /// The serial is empty, too long or has characters a serial cannot have here.
    #[error(
        "keel.blk= of client {index}: serial {text:?} must be 1 to {MAX_SERIAL} printable \
         characters without spaces or commas"
    )]
    Serial {
        /// The client.
        index: usize,
        /// What it says.
        text: String,
    },
    /// The range is empty or wraps.
    #[error("keel.blk= of client {index}: range start {start:#x} size {size:#x}: {why}")]
    Range {
        /// The client.
        index: usize,
        /// First byte.
        start: u64,
        /// Bytes.
        size: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The access field is neither `ro` nor `rw`.
    #[error("keel.blk= of client {index}: access {text:?} must be ro or rw")]
    Access {
        /// The client.
        index: usize,
        /// What it says.
        text: String,
    },
    /// More clients than a notification byte can name.
    #[error(
        "keel.blk= of client {index}: at most {MAX_CLIENTS} clients (a notification is one byte)"
    )]
    TooManyClients {
        /// The client.
        index: usize,
    },
    /// Two doorbells.
    #[error("keel.blkbell= is given twice ({first:?}, {second:?})")]
    TwoBells {
        /// The first value.
        first: String,
        /// The second.
        second: String,
    },
    /// The doorbell value is not a tty name.
    #[error("keel.blkbell={text:?}: expected a tty name such as hvc1 (or a /dev/ path)")]
    BadBell {
        /// What it says.
        text: String,
    },
}

/// What the command line asks of the agent.
#[derive(Debug, PartialEq, Eq)]
pub struct Cmdline {
    /// One entry per `keel.blk=`, in order: the client, or why it cannot be served.
    pub clients: Vec<Result<ClientSpec, CmdlineError>>,
    /// The doorbell's path (`/dev/<tty>`), if given.
    pub bell: Result<Option<String>, CmdlineError>,
}

/// Parse a kernel command line (the text of `/proc/cmdline`).
pub fn parse(text: &str) -> Cmdline {
    let mut clients = Vec::new();
    let mut bell: Result<Option<String>, CmdlineError> = Ok(None);
    for word in text.split_ascii_whitespace() {
        if let Some(value) = word.strip_prefix(BLK) {
            let index = clients.len();
            clients.push(parse_client(index, value));
        } else if let Some(value) = word.strip_prefix(BELL) {
            bell = match bell {
                Ok(None) => bell_path(value).map(Some),
                Ok(Some(first)) => Err(CmdlineError::TwoBells {
                    first,
                    second: value.to_string(),
                }),
                Err(e) => Err(e),
            };
        }
    }
    Cmdline { clients, bell }
}

/// The doorbell's path for a `keel.blkbell=` value.
fn bell_path(value: &str) -> Result<String, CmdlineError> {
    let bad = || CmdlineError::BadBell {
        text: value.to_string(),
    };
    let name = value.strip_prefix("/dev/").unwrap_or(value);
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(format!("/dev/{name}"))
    } else {
        Err(bad())
    }
}

/// A number: decimal, or hex with `0x`.
pub fn parse_number(text: &str) -> Option<u64> {
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (text, 10),
    };
    // from_str_radix also takes a leading '+': only digits are numbers here.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

fn parse_client(index: usize, value: &str) -> Result<ClientSpec, CmdlineError> {
    if index >= MAX_CLIENTS {
        return Err(CmdlineError::TooManyClients { index });
    }
    let fields: Vec<&str> = value.split(',').collect();
    let [
        gpa,
        region_len,
        slots,
        max_data,
        serial,
        start,
        size,
        access,
    ] = fields[..]
    else {
        return Err(CmdlineError::FieldCount {
            index,
            got: fields.len(),
        });
    };
    let number = |field: &'static str, text: &str| {
        parse_number(text).ok_or_else(|| CmdlineError::Number {
            index,
            field,
            text: text.to_string(),
        })
    };
    let gpa = number("gpa", gpa)?;
    let region_len_n = number("region_len", region_len)?;
    let slots = number("slots", slots)?;
    let max_data_n = number("max_data", max_data)?;
    let start = number("start", start)?;
    let size = number("size", size)?;

    if gpa % PAGE != 0 {
        return Err(CmdlineError::Unaligned { index, gpa });
    }
    if gpa.checked_add(region_len_n).is_none() {
        return Err(CmdlineError::RegionWraps {
            index,
            gpa,
            len: region_len_n,
        });
    }
    let geometry = ForwardGeometry {
        slots,
        // A value past usize is past the 1 MiB limit too: the check refuses it.
        max_data: usize::try_from(max_data_n).unwrap_or(usize::MAX),
    };
    geometry
        .check()
        .map_err(|source| CmdlineError::Geometry { index, source })?;
    let need = geometry.region_len();
    let region_len = usize::try_from(region_len_n).unwrap_or(usize::MAX);
    if region_len < need {
        return Err(CmdlineError::Geometry {
            index,
            source: ForwardError::RegionTooShort {
                len: region_len,
                need,
            },
        });
    }

    let serial_ok = !serial.is_empty()
        && serial.len() <= MAX_SERIAL
        && serial.bytes().all(|b| b.is_ascii_graphic());
    if !serial_ok {
        return Err(CmdlineError::Serial {
            index,
            text: serial.to_string(),
        });
    }

    let range_err = |why| CmdlineError::Range {
        index,
        start,
        size,
        why,
    };
    if size == 0 {
        return Err(range_err("the range is empty"));
    }
    if start.checked_add(size).is_none() {
        return Err(range_err("the range wraps around"));
    }
    let read_only = match access {
        "ro" => true,
        "rw" => false,
        other => {
            return Err(CmdlineError::Access {
                index,
                text: other.to_string(),
            });
        }
    };
    Ok(ClientSpec {
        gpa,
        region_len,
        geometry,
        serial: serial.to_string(),
        range: ClientRange {
            start,
            size,
            read_only,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: ForwardGeometry = ForwardGeometry::DEFAULT;

    fn good(index: usize, text: &str) -> ClientSpec {
        match parse(text).clients.into_iter().nth(index) {
            Some(Ok(c)) => c,
            other => panic!("{text}: {other:?}"),
        }
    }

    fn bad(text: &str) -> CmdlineError {
        match parse(text).clients.into_iter().next() {
            Some(Err(e)) => e,
            other => panic!("{text}: {other:?}"),
        }
    }

    fn blk(fields: &str) -> String {
        format!("console=hvc0 keel.blk={fields} quiet")
    }

    #[test]
    fn a_full_command_line_gives_each_client_in_order_and_the_bell() {
        let len = G.region_len();
        let text = format!(
            "console=ttyAMA0 keel.blk=0x50000000,{len:#x},16,65536,disk0,0,0x100000,rw \
             keel.blkbell=hvc1 keel.blk=0x50400000,{len},0x10,0x10000,disk0,0x100000,1048576,ro \
             keel.cmd=ZWNobw=="
        );

        let c = parse(&text);

        assert_eq!(c.bell, Ok(Some("/dev/hvc1".to_string())));
        assert_eq!(c.clients.len(), 2);
        let a = good(0, &text);
        assert_eq!(
            a,
            ClientSpec {
                gpa: 0x5000_0000,
                region_len: len,
                geometry: G,
                serial: "disk0".into(),
                range: ClientRange {
                    start: 0,
                    size: 0x10_0000,
                    read_only: false
                },
            }
        );
        let b = good(1, &text);
        assert_eq!(b.gpa, 0x5040_0000);
        assert_eq!(b.range.start, 0x10_0000);
        assert!(b.range.read_only);
        assert_eq!((a.access(), b.access()), ("rw", "ro"));
    }

    #[test]
    fn no_agent_parameters_means_no_clients_and_no_bell() {
        let c = parse("console=hvc0 root=/dev/vda keel.blkx=1 keel.cmd=abc");
        assert!(c.clients.is_empty());
        assert_eq!(c.bell, Ok(None));
    }

    #[test]
    fn a_bad_client_is_refused_alone_and_the_others_keep_their_index() {
        let len = G.region_len();
        let text = format!(
            "keel.blk=0x1000,{len},16,65536,d,0,4096,rw keel.blk=junk \
             keel.blk=0x2000,{len},16,65536,e,0,4096,ro"
        );
        let c = parse(&text);
        assert!(c.clients[0].is_ok());
        assert!(matches!(
            c.clients[1],
            Err(CmdlineError::FieldCount { index: 1, got: 1 })
        ));
        assert_eq!(c.clients[2].as_ref().unwrap().serial, "e");
    }

    #[test]
    fn each_malformed_field_is_named() {
        let len = G.region_len();
        let ok = |f: &[&str]| blk(&f.join(","));
        let base = [
            "0x50000000",
            &len.to_string(),
            "16",
            "65536",
            "disk0",
            "0",
            "4096",
            "rw",
        ];
        let with = |i: usize, v: &str| {
            let mut f = base;
            f[i] = v;
            ok(&f)
        };
        assert!(parse(&ok(&base)).clients[0].is_ok());

        let cases: &[(usize, &str, &str)] = &[
            (0, "0x5000000g", "gpa \"0x5000000g\" is not a number"),
            (0, "", "gpa \"\" is not a number"),
            (0, "+4096", "gpa \"+4096\" is not a number"),
            (0, "0x", "gpa \"0x\" is not a number"),
            (
                0,
                "0x50000800",
                "gpa 0x50000800 is not a multiple of 0x1000",
            ),
            (0, "0xfffffffffffff000", "wraps around"),
            (1, "-1", "region_len \"-1\" is not a number"),
            (1, "4096", "is too short: the geometry needs"),
            (2, "12", "slots must be a power of two"),
            (2, "99999999999999999999", "slots \"99999999999999999999\""),
            (3, "1000", "multiple of 512"),
            (3, "0x200000", "multiple of 512 from 512 to 1 MiB"),
            (4, "", "serial \"\" must be 1 to 20"),
            (
                4,
                "abcdefghijklmnopqrstu",
                "serial \"abcdefghijklmnopqrstu\"",
            ),
            (4, "d\u{e9}", "printable"),
            (5, "x", "start \"x\" is not a number"),
            (5, "0xffffffffffffffff", "the range wraps around"),
            (6, "0", "the range is empty"),
            (6, "1M", "size \"1M\" is not a number"),
            (7, "RW", "access \"RW\" must be ro or rw"),
            (7, "", "access \"\" must be ro or rw"),
        ];
        for &(i, v, want) in cases {
            let text = with(i, v);
            let e = bad(&text).to_string();
            assert!(e.contains(want), "{text}: {e:?} lacks {want:?}");
            assert!(e.starts_with("keel.blk= of client 0"), "{e}");
        }
        for fields in ["1,2,3", "0x1000,1,2,3,4,5,6,rw,extra"] {
            let e = bad(&blk(fields)).to_string();
            assert!(e.contains("comma-separated fields, expected 8"), "{e}");
        }
    }

    #[test]
    fn the_documented_example_parses() {
        // docs/driver-vms.md, "Kernel command line".
        let text = "keel.blk=0x48000000,0x202000,16,65536,store0,0,0x40000000,rw \
                    keel.blk=0x48400000,0x202000,16,65536,store0,0x40000000,0x40000000,ro \
                    keel.blkbell=hvc1";
        assert_eq!(G.region_len(), 0x20_2000);
        let c = parse(text);
        assert_eq!(good(0, text).region_len, 0x20_2000);
        assert!(good(1, text).range.read_only);
        assert_eq!(c.bell, Ok(Some("/dev/hvc1".into())));
    }

    #[test]
    fn numbers_are_decimal_or_hex() {
        assert_eq!(parse_number("0"), Some(0));
        assert_eq!(parse_number("4096"), Some(4096));
        assert_eq!(parse_number("0x1F"), Some(31));
        assert_eq!(parse_number("0X10"), Some(16));
        assert_eq!(parse_number("0x0"), Some(0));
        assert_eq!(parse_number("12a"), None);
        assert_eq!(parse_number(" 1"), None);
        assert_eq!(parse_number("18446744073709551616"), None);
    }

    #[test]
    fn the_bell_is_a_tty_name_given_once() {
        assert_eq!(
            parse("keel.blkbell=/dev/hvc0").bell,
            Ok(Some("/dev/hvc0".into()))
        );
        for bad in ["", "../mem", "/tmp/x", "a/b", ".."] {
            let got = parse(&format!("keel.blkbell={bad}")).bell;
            assert!(
                matches!(got, Err(CmdlineError::BadBell { .. })),
                "{bad}: {got:?}"
            );
        }
        let two = parse("keel.blkbell=hvc0 keel.blkbell=hvc1").bell;
        assert_eq!(
            two.unwrap_err().to_string(),
            "keel.blkbell= is given twice (\"/dev/hvc0\", \"hvc1\")"
        );
    }

    #[test]
    fn at_most_256_clients() {
        let one = format!("keel.blk=0x1000,{},16,65536,d,0,512,ro ", G.region_len());
        let c = parse(&one.repeat(257));
        assert!(c.clients[255].is_ok());
        assert!(matches!(
            c.clients[256],
            Err(CmdlineError::TooManyClients { index: 256 })
        ));
    }
}
