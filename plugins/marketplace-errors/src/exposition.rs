//! A parser for the Prometheus text exposition format (version 0.0.4, and
//! the OpenMetrics lines an app may mix in): comments (`# HELP`, `# TYPE`,
//! `# EOF`), samples `name{label="value",...} value [timestamp]`, escaped
//! label values (`\\`, `\"`, `\n`), quoted UTF-8 names inside the braces,
//! `NaN` and `±Inf` values, and OpenMetrics exemplars (ignored). A line it
//! cannot read is an error naming the line: a broken exposition is never
//! half-read.

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name.
    pub name: String,
    /// Label pairs in the order written.
    pub labels: Vec<(String, String)>,
    /// The value; may be NaN or infinite.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of `text`, in order.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        match parse_line(line) {
            Ok(Some(sample)) => samples.push(sample),
            Ok(None) => {}
            Err(e) => return Err(format!("line {}: {e}: {}", i + 1, excerpt(line))),
        }
    }
    Ok(samples)
}

/// A line as quoted in errors: at most 120 characters.
fn excerpt(line: &str) -> String {
    match line.char_indices().nth(120) {
        Some((end, _)) => format!("{:?}...", &line[..end]),
        None => format!("{line:?}"),
    }
}

/// One line: `None` for blanks and comments.
fn parse_line(line: &str) -> Result<Option<Sample>, String> {
    let mut c = Cursor::new(line);
    c.skip_blanks();
    if c.at_end() || c.peek() == Some('#') {
        return Ok(None);
    }
    let mut name = if c.peek() == Some('{') {
        None
    } else {
        Some(c.ident(true).ok_or("expected a metric name")?)
    };
    let mut blank = c.skip_blanks();
    let mut labels: Vec<(String, String)> = Vec::new();
    if c.eat('{') {
        loop {
            c.skip_blanks();
            if c.eat('}') {
                break;
            }
            let quoted = c.peek() == Some('"');
            let key = if quoted {
                c.quoted()?
            } else {
                c.ident(false).ok_or("expected a label name")?
            };
            c.skip_blanks();
            if quoted && name.is_none() && matches!(c.peek(), Some(',' | '}')) {
                // `{"metric.name", label="x"}`: the UTF-8 name syntax.
                name = Some(key);
            } else {
                if !c.eat('=') {
                    return Err(format!("expected `=` after label `{key}`"));
                }
                c.skip_blanks();
                let value = c.quoted()?;
                if labels.iter().any(|(k, _)| *k == key) {
                    return Err(format!("label `{key}` appears twice"));
                }
                labels.push((key, value));
            }
            c.skip_blanks();
            if c.eat('}') {
                break;
            }
            if !c.eat(',') {
                return Err("expected `,` or `}` in the labels".to_string());
            }
        }
        blank = c.skip_blanks();
    }
    let name = name.ok_or("no metric name")?;
    if !blank {
        return Err("expected a blank before the value".to_string());
    }
    let value = parse_value(c.token()).ok_or("the value is not a number")?;
    if c.skip_blanks() && !c.at_end() && c.peek() != Some('#') {
        // Integer milliseconds (text format) or float seconds (OpenMetrics).
        let ts = c.token();
        if ts.parse::<i64>().is_err() && ts.parse::<f64>().map_or(true, |t| !t.is_finite()) {
            return Err(format!("`{ts}` is not a timestamp"));
        }
        c.skip_blanks();
    }
    // What remains may only be an OpenMetrics exemplar: `# {...} value`.
    if !c.at_end() && c.peek() != Some('#') {
        return Err("unexpected text after the value".to_string());
    }
    Ok(Some(Sample {
        name,
        labels,
        value,
    }))
}

/// A sample value: a float, `NaN`, `+Inf`, `-Inf` (any case, as Go's
/// parser accepts them).
pub fn parse_value(token: &str) -> Option<f64> {
    if token.is_empty() || token.contains('_') {
        return None;
    }
    token.parse::<f64>().ok()
}

/// A position in one line.
pub struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        Cursor { rest: text }
    }

    /// Whether the whole text was read.
    pub fn at_end(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next character.
    pub fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    /// Consumes `c` if it comes next.
    pub fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// Skips spaces and tabs; whether there were any.
    pub fn skip_blanks(&mut self) -> bool {
        let before = self.rest.len();
        self.rest = self.rest.trim_start_matches([' ', '\t']);
        self.rest.len() != before
    }

    /// The text up to the next blank.
    pub fn token(&mut self) -> &'a str {
        let end = self.rest.find([' ', '\t']).unwrap_or(self.rest.len());
        let (token, rest) = self.rest.split_at(end);
        self.rest = rest;
        token
    }

    /// The text up to the next of `stops` (not consumed) or the end.
    pub fn until(&mut self, stops: &[char]) -> &'a str {
        let end = self.rest.find(stops).unwrap_or(self.rest.len());
        let (text, rest) = self.rest.split_at(end);
        self.rest = rest;
        text
    }

    /// A name `[a-zA-Z_][a-zA-Z0-9_]*`, with `:` allowed in metric names.
    pub fn ident(&mut self, metric: bool) -> Option<String> {
        let ok = |(i, b): (usize, u8)| {
            b.is_ascii_alphabetic()
                || b == b'_'
                || (metric && b == b':')
                || (i > 0 && b.is_ascii_digit())
        };
        let end = self
            .rest
            .bytes()
            .enumerate()
            .find(|&x| !ok(x))
            .map_or(self.rest.len(), |(i, _)| i);
        if end == 0 {
            return None;
        }
        let (name, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(name.to_string())
    }

    /// A double-quoted string with the escapes `\\`, `\"` and `\n`.
    pub fn quoted(&mut self) -> Result<String, String> {
        if !self.eat('"') {
            return Err("expected `\"`".to_string());
        }
        let mut out = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 1..];
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, '"')) => out.push('"'),
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, other)) => return Err(format!("invalid escape `\\{other}`")),
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err("unterminated quoted string".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Sample {
        let mut s = parse(line).expect("valid");
        assert_eq!(s.len(), 1, "{line}");
        s.remove(0)
    }

    fn labels(s: &Sample) -> Vec<(&str, &str)> {
        s.labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn a_realistic_exposition() {
        let text = "# HELP marketplace_api_responses_total Responses of the marketplace APIs.\n\
                    # TYPE marketplace_api_responses_total counter\n\
                    marketplace_api_responses_total{marketplace=\"amazon\",code=\"200\"} 1027\n\
                    marketplace_api_responses_total{marketplace=\"amazon\",code=\"429\"} 3 1712345678000\n\
                    \n\
                    # a free comment\n\
                    http_request_duration_seconds_bucket{le=\"+Inf\"} 144320\r\n\
                    go_gc_duration_seconds{quantile=\"0.5\"} NaN\n\
                    process_start_time_seconds 1.712e+09\n\
                    up -Inf\n\
                    # EOF\n";
        let s = parse(text).expect("valid");
        assert_eq!(s.len(), 6);
        assert_eq!(s[0].name, "marketplace_api_responses_total");
        assert_eq!(labels(&s[0]), [("marketplace", "amazon"), ("code", "200")]);
        assert_eq!((s[0].value, s[1].value), (1027.0, 3.0));
        assert_eq!(s[1].label("code"), Some("429"));
        assert_eq!(s[2].label("le"), Some("+Inf"));
        assert!(s[3].value.is_nan());
        assert_eq!(s[4].value, 1.712e9);
        assert_eq!(s[5].value, f64::NEG_INFINITY);
    }

    #[test]
    fn escapes_blanks_and_odd_forms() {
        let s = one(r#"m{path="C:\\dir",msg="say \"hi\"\nbye",} 1"#);
        assert_eq!(
            labels(&s),
            [("path", "C:\\dir"), ("msg", "say \"hi\"\nbye")]
        );
        let s = one("  m\t{ a = \"x,}\" , b=\"{#}\" }\t+Inf  \t-5  ");
        assert_eq!(labels(&s), [("a", "x,}"), ("b", "{#}")]);
        assert_eq!(s.value, f64::INFINITY);
        assert_eq!(one("m{} 2").labels, []);
        assert_eq!(one("m:rate5m 0.5 1.5e9").name, "m:rate5m");
        assert!(one("m nan").value.is_nan());
        let s = one(r#"{"my.metric", "my.label"="v"} 7"#);
        assert_eq!(
            (s.name.as_str(), labels(&s)),
            ("my.metric", vec![("my.label", "v")])
        );
        // OpenMetrics exemplar after the value.
        let s = one(r#"m_total{code="500"} 4 # {trace_id="abc"} 1 1.6e9"#);
        assert_eq!(s.value, 4.0);
    }

    #[test]
    fn broken_lines_are_errors_naming_the_line() {
        for (bad, why) in [
            ("m{code=\"500} 1", "unterminated"),
            ("m{code=500} 1", "expected `\"`"),
            ("m{code=\"5\\x\"} 1", "invalid escape"),
            ("m{code \"5\"} 1", "expected `=`"),
            ("m{a=\"1\" b=\"2\"} 1", "expected `,` or `}`"),
            ("m{a=\"1\",a=\"2\"} 1", "appears twice"),
            ("m", "blank before the value"),
            ("m one", "not a number"),
            ("m 1_000", "not a number"),
            ("m 1 soon", "not a timestamp"),
            ("m 1 2 3", "unexpected text"),
            ("9m 1", "metric name"),
            ("{a=\"1\"} 1", "no metric name"),
            ("<html>", "metric name"),
        ] {
            let e = parse(&format!("ok 1\n{bad}\n")).expect_err(bad);
            assert!(e.starts_with("line 2: ") && e.contains(why), "{bad}: {e}");
        }
    }
}
