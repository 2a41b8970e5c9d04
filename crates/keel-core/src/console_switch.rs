//! One terminal's input for the consoles of several VMs: which VM has the input focus,
//! and the escape sequence that moves it (docs/console.md).
//!
//! At the start of a line (before any input, after a carriage return or a line feed, and
//! after a switch) an `@` begins a command that ends at Enter (`\r` or `\n`):
//!
//! - `@N` (decimal `N`, the VM's index in the system file) or `@name` moves the input
//!   focus to that VM ([`Routed::Switched`]); nothing is sent to any VM;
//! - `@` followed by anything that names no VM sends nothing and leaves the focus where it
//!   was ([`Routed::NoSuchVm`]);
//! - `@@` sends one literal `@` to the focused VM, and the rest of that line goes through
//!   as typed;
//! - Backspace (`0x7f` or `0x08`) in a command deletes its last byte (deleting the `@`
//!   leaves the command); any other control byte cancels it ([`Routed::Cancelled`]).
//!
//! An `@` anywhere else in a line is an ordinary byte. A line feed right after the `\r`
//! that ended a command is dropped (a `\r\n` line end). The same state machine serves
//! `keel up` on Linux and the console PD on seL4; it holds no more than one command
//! ([`COMMAND_MAX`] bytes) and never allocates while routing.

use alloc::string::String;
use alloc::vec::Vec;

/// Longest command kept after its `@`; a longer one names no VM.
pub const COMMAND_MAX: usize = 64;

/// What [`ConsoleSwitch::feed`] makes of its input, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routed<'a> {
    /// Bytes for VM `vm`'s console input.
    Bytes {
        /// The VM's index.
        vm: usize,
        /// The bytes, in order.
        bytes: &'a [u8],
    },
    /// The input focus moved to VM `vm` (also when it already had it).
    Switched {
        /// The VM's index.
        vm: usize,
    },
    /// `@target` named no VM: nothing was sent, the focus stays.
    NoSuchVm {
        /// What followed the `@`.
        target: &'a [u8],
        /// The VM that keeps the focus.
        focus: usize,
    },
    /// A control byte ended a command before Enter: nothing was sent.
    Cancelled {
        /// The VM that keeps the focus.
        focus: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line.
    LineStart,
    /// Inside a line: every byte goes to the focused VM.
    MidLine,
    /// After a line-start `@`: collecting a command.
    Command,
    /// A command just ended with `\r`: a `\n` next is part of that line end.
    AfterCommandCr,
}

/// The input focus among a system's VMs and the `@` command being typed.
#[derive(Debug)]
pub struct ConsoleSwitch {
    names: Vec<String>,
    focus: usize,
    state: State,
    command: [u8; COMMAND_MAX],
    len: usize,
    /// The command outgrew [`COMMAND_MAX`].
    overflow: bool,
}

impl ConsoleSwitch {
    /// A switch among VMs `names` (in system order); VM 0 has the focus.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> ConsoleSwitch {
        ConsoleSwitch {
            names: names.into_iter().map(String::from).collect(),
            focus: 0,
            state: State::LineStart,
            command: [0; COMMAND_MAX],
            len: 0,
            overflow: false,
        }
    }

    /// The VM that has the input focus.
    pub fn focus(&self) -> usize {
        self.focus
    }

    /// VM `vm`'s name.
    pub fn name(&self, vm: usize) -> Option<&str> {
        self.names.get(vm).map(String::as_str)
    }

    /// The VM `target` names: its decimal index or its name.
    pub fn lookup(&self, target: &[u8]) -> Option<usize> {
        if !target.is_empty() && target.iter().all(u8::is_ascii_digit) {
            let index = core::str::from_utf8(target).ok()?.parse::<usize>().ok()?;
            return (index < self.names.len()).then_some(index);
        }
        self.names.iter().position(|n| n.as_bytes() == target)
    }

    /// Route `input`: `out` gets, in order, runs of bytes for the focused VM and what the
    /// commands did. Input may be split anywhere: a command may span calls.
    pub fn feed(&mut self, input: &[u8], out: &mut dyn FnMut(Routed<'_>)) {
        // Start of the current run of bytes for the focused VM.
        let mut run: Option<usize> = None;
        for (i, &b) in input.iter().enumerate() {
            match self.state {
                State::LineStart | State::MidLine | State::AfterCommandCr => {
                    let line_start = self.state != State::MidLine;
                    if self.state == State::AfterCommandCr && b == b'\n' {
                        self.state = State::LineStart;
                        continue;
                    }
                    if line_start && b == b'@' {
                        if let Some(s) = run.take() {
                            out(Routed::Bytes {
                                vm: self.focus,
                                bytes: &input[s..i],
                            });
                        }
                        self.state = State::Command;
                        self.len = 0;
                        self.overflow = false;
                        continue;
                    }
                    run.get_or_insert(i);
                    self.state = if b == b'\r' || b == b'\n' {
                        State::LineStart
                    } else {
                        State::MidLine
                    };
                }
                State::Command => {
                    if b == b'@' && self.len == 0 && !self.overflow {
                        // `@@`: one literal `@`, then the rest of the line as typed.
                        out(Routed::Bytes {
                            vm: self.focus,
                            bytes: b"@",
                        });
                        self.state = State::MidLine;
                    } else if b == b'\r' || b == b'\n' {
                        self.state = if b == b'\r' {
                            State::AfterCommandCr
                        } else {
                            State::LineStart
                        };
                        self.run_command(out);
                    } else if b == 0x7f || b == 0x08 {
                        if self.overflow {
                            self.overflow = false;
                        } else if self.len > 0 {
                            self.len -= 1;
                        } else {
                            self.state = State::LineStart;
                        }
                    } else if b < 0x20 {
                        self.state = State::LineStart;
                        out(Routed::Cancelled { focus: self.focus });
                    } else if self.len < COMMAND_MAX {
                        self.command[self.len] = b;
                        self.len += 1;
                    } else {
                        self.overflow = true;
                    }
                }
            }
        }
        if let Some(s) = run {
            out(Routed::Bytes {
                vm: self.focus,
                bytes: &input[s..],
            });
        }
    }

    fn run_command(&mut self, out: &mut dyn FnMut(Routed<'_>)) {
        let target = &self.command[..self.len];
        match self.lookup(target).filter(|_| !self.overflow) {
            Some(vm) => {
                self.focus = vm;
                out(Routed::Switched { vm });
            }
            None => out(Routed::NoSuchVm {
                target,
                focus: self.focus,
            }),
        }
    }
}

/// The line to print for `r` in a system of VMs `names` (none for bytes):
/// `keel: input -> vm "b"`, or why nothing happened, naming the VMs a command can reach.
pub fn message<S: AsRef<str>>(names: &[S], r: &Routed<'_>) -> Option<String> {
    let name = |vm: usize| names.get(vm).map_or("?", |n| n.as_ref());
    match *r {
        Routed::Bytes { .. } => None,
        Routed::Switched { vm } => Some(alloc::format!("keel: input -> vm \"{}\"", name(vm))),
        Routed::NoSuchVm { target, focus } => {
            let mut m = alloc::format!(
                "keel: no vm \"@{}\"; input stays with vm \"{}\" (",
                String::from_utf8_lossy(target),
                name(focus)
            );
            for (i, n) in names.iter().enumerate() {
                if i > 0 {
                    m.push_str(", ");
                }
                m.push_str(&alloc::format!("@{i} or @{}", n.as_ref()));
            }
            m.push_str("; @@ sends @)");
            Some(m)
        }
        Routed::Cancelled { focus } => Some(alloc::format!(
            "keel: @ command cancelled; input stays with vm \"{}\"",
            name(focus)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// What came out, flattened: per-VM bytes as `<vm>:text`, runs of one VM joined, and
    /// events as words.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Log {
        items: Vec<String>,
    }

    impl Log {
        fn push(&mut self, r: Routed<'_>) {
            match r {
                Routed::Bytes { vm, bytes } => {
                    let text = core::str::from_utf8(bytes).unwrap();
                    let tag = alloc::format!("{vm}:");
                    match self.items.last_mut() {
                        Some(last) if last.starts_with(&tag) => last.push_str(text),
                        _ => self.items.push(alloc::format!("{tag}{text}")),
                    }
                }
                Routed::Switched { vm } => self.items.push(alloc::format!("switch {vm}")),
                Routed::NoSuchVm { target, .. } => self.items.push(alloc::format!(
                    "no vm {}",
                    core::str::from_utf8(target).unwrap()
                )),
                Routed::Cancelled { .. } => self.items.push("cancelled".into()),
            }
        }
    }

    fn route(sw: &mut ConsoleSwitch, chunks: &[&[u8]]) -> Vec<String> {
        let mut log = Log::default();
        for c in chunks {
            sw.feed(c, &mut |r| log.push(r));
        }
        log.items
    }

    fn two() -> ConsoleSwitch {
        ConsoleSwitch::new(["web", "db"])
    }

    fn s(items: &[&str]) -> Vec<String> {
        items.iter().map(|&i| i.into()).collect()
    }

    #[test]
    fn input_goes_to_the_first_vm_until_a_switch() {
        let mut sw = two();

        let got = route(&mut sw, &[b"ls\n@1\npwd\n@0\nid\n"]);

        assert_eq!(
            got,
            s(&["0:ls\n", "switch 1", "1:pwd\n", "switch 0", "0:id\n"])
        );
        assert_eq!(sw.focus(), 0);
    }

    #[test]
    fn a_vm_is_named_by_name_too() {
        let mut sw = two();

        let got = route(&mut sw, &[b"@db\rx\r"]);

        assert_eq!(got, s(&["switch 1", "1:x\r"]));
    }

    #[test]
    fn double_at_sends_one_literal_at_and_the_rest_of_its_line() {
        let mut sw = two();

        let got = route(&mut sw, &[b"@@1 stays\n"]);

        assert_eq!(got, s(&["0:@1 stays\n"]));
        assert_eq!(sw.focus(), 0);
    }

    #[test]
    fn at_in_the_middle_of_a_line_passes_through() {
        let mut sw = two();

        let got = route(&mut sw, &[b"mail user@1\n", b"x @db\n"]);

        assert_eq!(got, s(&["0:mail user@1\nx @db\n"]));
        assert_eq!(sw.focus(), 0);
    }

    #[test]
    fn an_unknown_vm_sends_nothing_and_keeps_the_focus() {
        let mut sw = two();

        let got = route(&mut sw, &[b"@1\n@2\n@nope\n@\nhi\n"]);

        assert_eq!(
            got,
            s(&["switch 1", "no vm 2", "no vm nope", "no vm ", "1:hi\n"])
        );
        let m = message(
            &["web", "db"],
            &Routed::NoSuchVm {
                target: b"2",
                focus: sw.focus(),
            },
        )
        .unwrap();
        assert_eq!(
            m,
            "keel: no vm \"@2\"; input stays with vm \"db\" (@0 or @web, @1 or @db; @@ sends @)"
        );
    }

    #[test]
    fn switch_message_names_the_vm() {
        let names = ["web", "db"];

        assert_eq!(
            message(&names, &Routed::Switched { vm: 1 }).unwrap(),
            "keel: input -> vm \"db\""
        );
        assert_eq!(message(&names, &Routed::Bytes { vm: 0, bytes: b"x" }), None);
    }

    #[test]
    fn a_long_command_names_no_vm() {
        let mut sw = two();
        let mut line = vec![b'@'];
        line.extend(core::iter::repeat_n(b'1', COMMAND_MAX + 5));
        line.extend_from_slice(b"\nok\n");

        let got = route(&mut sw, &[&line]);

        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("no vm 111"), "{got:?}");
        assert_eq!(got[1], "0:ok\n");
    }

    #[test]
    fn backspace_edits_a_command_and_control_bytes_cancel_it() {
        let mut sw = two();

        let got = route(&mut sw, &[b"@dx\x7fb\n@\x7fhi\n@1\x03x\n"]);

        assert_eq!(got, s(&["switch 1", "1:hi\n", "cancelled", "1:x\n"]));
    }

    #[test]
    fn crlf_after_a_command_is_one_line_end() {
        let mut sw = two();

        let got = route(&mut sw, &[b"@1\r\n", b"\nx\r\n"]);

        assert_eq!(got, s(&["switch 1", "1:\nx\r\n"]));
    }

    #[test]
    fn a_carriage_return_starts_a_line() {
        let mut sw = two();

        let got = route(&mut sw, &[b"a\r@1\rb"]);

        assert_eq!(got, s(&["0:a\r", "switch 1", "1:b"]));
    }

    /// Every way of splitting `input` in two (and into single bytes) routes it the same.
    #[test]
    fn input_split_at_every_byte_boundary_routes_the_same() {
        let input: &[u8] = b"one\n@1\ntwo @0\n@@x\n@bad\n@db\r\n\r@0\nthree\x7f\n@w\x7f\x7f\n";
        let whole = route(&mut two(), &[input]);
        assert_eq!(
            whole,
            s(&[
                "0:one\n",
                "switch 1",
                "1:two @0\n@x\n",
                "no vm bad",
                "switch 1",
                "1:\r",
                "switch 0",
                "0:three\x7f\n\n",
            ])
        );
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(route(&mut two(), &[a, b]), whole, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(route(&mut two(), &bytes), whole, "byte by byte");
    }
}
