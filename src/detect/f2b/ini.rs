//! One fail2ban `.conf`/`.local` file, parsed by the rules fail2ban's reader uses (Python's
//! `configparser` with `;` inline comments): `[section]` headers, `key = value` or
//! `key: value` (keys lower-cased), values continued on more-indented lines (blank lines
//! inside a value kept, trailing ones dropped), whole-line comments starting with `#` or
//! `;`, inline comments starting with `;` after a space. A key given twice in one
//! section, a line outside any section or a line that is neither is an error with its
//! line number.

use std::path::Path;

use super::DefinitionError;

/// One `key = value`, with the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// One `[section]` (`DEFAULT` is a section like the others here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub options: Vec<Opt>,
}

impl Section {
    pub fn get(&self, key: &str) -> Option<&Opt> {
        self.options.iter().find(|o| o.key == key)
    }
}

/// A parsed file: its sections in file order, a header given twice merged into the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ini {
    pub sections: Vec<Section>,
}

impl Ini {
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }
}

/// Where an inline `;` comment starts: at the line's start or after whitespace.
fn inline_comment(line: &str) -> Option<usize> {
    line.match_indices(';').map(|(i, _)| i).find(|&i| i == 0 || line[..i].ends_with(char::is_whitespace))
}

/// Parses `text`, read from `file` (named in errors).
pub fn parse(text: &str, file: &Path) -> Result<Ini, DefinitionError> {
    let err = |line: usize, message: String| DefinitionError::at(file, line, message);
    let mut ini = Ini::default();
    // The section being filled, the option being continued (index) and its indentation.
    let mut current: Option<usize> = None;
    let mut open: Option<(usize, usize)> = None;
    // Values as lists of lines, joined at the end.
    let mut lines: Vec<Vec<Vec<String>>> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let n = n + 1;
        let trimmed = raw.trim();
        let comment = if trimmed.starts_with('#') || trimmed.starts_with(';') { Some(0) } else { inline_comment(raw) };
        let value = raw[..comment.unwrap_or(raw.len())].trim();
        if value.is_empty() {
            // A blank line inside a value is part of it; a comment line is not.
            if comment.is_none()
                && let (Some(s), Some((o, _))) = (current, open)
            {
                lines[s][o].push(String::new());
            }
            continue;
        }
        let indent = raw.len() - raw.trim_start().len();
        if let (Some(s), Some((o, level))) = (current, open)
            && indent > level
        {
            lines[s][o].push(value.to_string());
            continue;
        }
        if let Some(header) = value.strip_prefix('[').and_then(|v| v.rfind(']').map(|end| &v[..end])) {
            if header.is_empty() {
                return Err(err(n, format!("`{value}`: a section header needs a name")));
            }
            let index = match ini.sections.iter().position(|s| s.name == header) {
                Some(i) => i,
                None => {
                    ini.sections.push(Section { name: header.to_string(), options: Vec::new() });
                    lines.push(Vec::new());
                    ini.sections.len() - 1
                }
            };
            current = Some(index);
            open = None;
            continue;
        }
        let Some(s) = current else {
            return Err(err(n, format!("`{value}` comes before any [section]")));
        };
        let Some(split) = value.find(['=', ':']) else {
            return Err(err(n, format!("`{value}`: expected `key = value`")));
        };
        let key = value[..split].trim_end().to_lowercase();
        if key.is_empty() {
            return Err(err(n, format!("`{value}`: the key is empty")));
        }
        let section = &mut ini.sections[s];
        if let Some(first) = section.get(&key) {
            return Err(err(n, format!("[{}] {key} is already set on line {} of this file", section.name, first.line)));
        }
        section.options.push(Opt { key, value: String::new(), line: n });
        lines[s].push(vec![value[split + 1..].trim().to_string()]);
        open = Some((section.options.len() - 1, indent));
    }
    for (section, values) in ini.sections.iter_mut().zip(lines) {
        for (opt, value) in section.options.iter_mut().zip(values) {
            opt.value = value.join("\n").trim_end().to_string();
        }
    }
    Ok(ini)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Ini {
        parse(text, Path::new("t.conf")).unwrap()
    }

    #[test]
    fn reads_values_as_fail2ban_does() {
        let ini = parse_ok(
            "# a comment\n[INCLUDES]\nbefore = common.conf\n\n[Definition]\nFailRegex = ^a <HOST>$\n    ^b;c <HOST>$ ; comment\n\n  # not part of it\n            ^d\n\nx: y\nempty =\n[Definition]\nlate = 1\n",
        );
        let def = ini.section("Definition").unwrap();
        assert_eq!(def.get("failregex").unwrap().value, "^a <HOST>$\n^b;c <HOST>$\n\n^d");
        assert_eq!(def.get("failregex").unwrap().line, 6);
        assert_eq!(def.get("x").unwrap().value, "y");
        assert_eq!(def.get("empty").unwrap().value, "");
        assert_eq!(def.get("late").unwrap().value, "1", "a repeated header continues the section");
        assert_eq!(ini.section("INCLUDES").unwrap().get("before").unwrap().value, "common.conf");
    }

    #[test]
    fn names_the_line_of_what_it_cannot_read() {
        let e = |text: &str| parse(text, Path::new("/f/x.conf")).unwrap_err().to_string();
        assert_eq!(e("a = 1\n"), "/f/x.conf:1: `a = 1` comes before any [section]");
        assert_eq!(e("[D]\njunk\n"), "/f/x.conf:2: `junk`: expected `key = value`");
        assert_eq!(e("[D]\na = 1\nA = 2\n"), "/f/x.conf:3: [D] a is already set on line 2 of this file");
        assert_eq!(e("[D]\n= 2\n"), "/f/x.conf:2: `= 2`: the key is empty");
    }
}
