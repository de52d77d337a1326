//! Kafka's topic name rules: 1..=249 characters of `[a-zA-Z0-9._-]`, neither `.` nor `..`;
//! and no two topics whose names differ only by `.` versus `_` (their metric names collide).

use super::error::ControlError;

/// The longest legal topic name (Kafka's limit, so that partition directories fit in 255 bytes).
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Checks a topic name against Kafka's rules.
pub fn validate(name: &str) -> Result<(), ControlError> {
    if name.is_empty() {
        return Err(ControlError::InvalidTopic(
            "topic name is illegal, it can't be empty".into(),
        ));
    }
    if name == "." || name == ".." {
        return Err(ControlError::InvalidTopic(format!(
            "topic name cannot be \"{name}\""
        )));
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(ControlError::InvalidTopic(format!(
            "topic name is illegal, it can't be longer than {MAX_TOPIC_NAME_LEN} characters, topic name: {name}"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ControlError::InvalidTopic(format!(
            "topic name {name:?} is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-' ({bad:?})"
        )));
    }
    Ok(())
}

/// Whether two different names collide once `.` is read as `_`.
pub fn collides(a: &str, b: &str) -> bool {
    a != b && a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| unify(x) == unify(y))
}

fn unify(byte: u8) -> u8 {
    if byte == b'.' {
        b'_'
    } else {
        byte
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_legal_names() {
        for name in ["a", "A-b_c.9", "..a", "-", &"x".repeat(249)] {
            assert_eq!(validate(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn rejects_illegal_names() {
        let too_long = "x".repeat(250);
        for name in [
            "",
            ".",
            "..",
            "a b",
            "a/b",
            "ä",
            "a\0",
            "t*",
            too_long.as_str(),
        ] {
            let err = validate(name).unwrap_err();
            assert!(matches!(err, ControlError::InvalidTopic(_)), "{name}");
        }
    }

    #[test]
    fn dot_and_underscore_collide() {
        assert!(collides("a.b", "a_b"));
        assert!(collides("a_b", "a.b"));
        assert!(!collides("a.b", "a.b"));
        assert!(!collides("a.b", "a-b"));
        assert!(!collides("a.b", "a.bc"));
    }
}
