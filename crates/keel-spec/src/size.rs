//! Sizes: `"256M"`, `"1G"`, `"0x1000"`, `268435456`.

use core::fmt;

/// Parses a size or address: a decimal or `0x` hexadecimal number (underscores allowed between
/// digits), optionally followed by a binary unit `K`, `M`, `G`, `T` (also `KiB`, `MiB`, …,
/// case-insensitive). Returns the value in bytes, or why the text is not a size.
pub fn parse_size(text: &str) -> Result<u64, &'static str> {
    let text = text.trim();
    let (number, unit) = split_unit(text);
    const UNITS: [(&str, u32); 13] = [
        ("", 0),
        ("b", 0),
        ("k", 10),
        ("kb", 10),
        ("kib", 10),
        ("m", 20),
        ("mb", 20),
        ("mib", 20),
        ("g", 30),
        ("gb", 30),
        ("gib", 30),
        ("t", 40),
        ("tib", 40),
    ];
    let shift = UNITS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
        .map(|&(_, shift)| shift)
        .ok_or("unknown unit; use K, M, G or T")?;
    let value = parse_number(number)?;
    value
        .checked_mul(1u64 << shift)
        .ok_or("too large for 64 bits")
}

fn split_unit(text: &str) -> (&str, &str) {
    // Hex digits include 'b' (and the hex prefix includes 'x'), so only a decimal number may
    // carry a bare "B"; for hex, the unit starts at the first non-hex character after "0x".
    let is_hex =
        text.len() >= 2 && text.as_bytes()[0] == b'0' && matches!(text.as_bytes()[1], b'x' | b'X');
    if is_hex {
        let rest = &text[2..];
        let end = rest
            .find(|c: char| !(c.is_ascii_hexdigit() || c == '_'))
            .map_or(text.len(), |i| i + 2);
        (&text[..end], &text[end..])
    } else {
        let end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '_'))
            .unwrap_or(text.len());
        (&text[..end], &text[end..])
    }
}

fn parse_number(number: &str) -> Result<u64, &'static str> {
    let (digits, radix) = match number
        .strip_prefix("0x")
        .or_else(|| number.strip_prefix("0X"))
    {
        Some(hex) => (hex, 16),
        None => (number, 10),
    };
    if digits.is_empty() {
        return Err("no number");
    }
    if digits.starts_with('_') || digits.ends_with('_') || digits.contains("__") {
        return Err("misplaced underscore");
    }
    let mut value: u64 = 0;
    for c in digits.chars().filter(|&c| c != '_') {
        let digit = c.to_digit(radix).ok_or("not a number")?;
        value = value
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(u64::from(digit)))
            .ok_or("too large for 64 bits")?;
    }
    Ok(value)
}

/// Displays a byte count in the largest binary unit that divides it exactly
/// (`268435456` → `256M`, `4097` → `4097`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeDisplay(pub u64);

impl fmt::Display for SizeDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n == 0 {
            return f.write_str("0");
        }
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if n.trailing_zeros() >= shift {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_binary_multiples() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
    }

    #[test]
    fn plain_and_hex_numbers_are_bytes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0x4000_0000"), Ok(0x4000_0000));
        assert_eq!(parse_size("0xBB"), Ok(0xbb));
        assert_eq!(parse_size("0x10M"), Ok(16 << 20));
    }

    #[test]
    fn size_overflow_is_an_error_not_a_wrap() {
        assert_eq!(parse_size("17179869184G"), Err("too large for 64 bits"));
        assert_eq!(
            parse_size("99999999999999999999"),
            Err("too large for 64 bits")
        );
    }

    #[test]
    fn garbage_sizes_are_rejected() {
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-5").is_err());
        assert!(parse_size("1_").is_err());
        assert!(parse_size("0x").is_err());
    }

    #[test]
    fn sizes_display_in_the_largest_exact_unit() {
        use alloc::string::ToString;
        assert_eq!(SizeDisplay(256 << 20).to_string(), "256M");
        assert_eq!(SizeDisplay(3 << 30).to_string(), "3G");
        assert_eq!(SizeDisplay(4097).to_string(), "4097");
    }
}
