//! The dev providers' two pages: choose who logs in, and logged out. Plain HTML with its
//! own inline style, no script; every value from the people file is escaped.

use std::fmt::Write as _;

use super::idp::Provider;
use super::people::{Person, Role};

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#1a1a1a;background:#fff}\
h1{font-size:1.5rem}p.note{background:#fff4ce;border-left:4px solid #8a6d00;padding:.5rem 1rem}\
ul{list-style:none;padding:0}li{margin:.5rem 0}\
button{font:inherit;width:100%;text-align:left;padding:.75rem 1rem;border:2px solid #1d4f91;border-radius:6px;background:#f3f7fc;color:#1a1a1a;cursor:pointer}\
button:hover,button:focus{background:#dbe7f6;outline:3px solid #1d4f91;outline-offset:2px}\
.role{display:block;font-size:.9rem;color:#3d3d3d}";

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n{body}</main>\n</body>\n</html>\n",
        escape(title)
    )
}

fn role(person: &Person) -> &'static str {
    match person.role {
        Role::Patient => "patient",
        Role::Therapist => "therapist",
        Role::Auditor => "auditor (access log only)",
    }
}

/// The page that lists who may log in at `provider`.
pub fn chooser(provider: Provider, segment: &str, request_uri: &str, persons: &[Person]) -> String {
    let mut items = String::new();
    for person in persons {
        let _ = writeln!(
            items,
            "<li><button type=\"submit\" name=\"person\" value=\"{}\">{}<span class=\"role\">{}</span></button></li>",
            escape(&person.name),
            escape(&person.display_name),
            role(person)
        );
    }
    if persons.is_empty() {
        items.push_str("<li>Nobody in the people file logs in here.</li>\n");
    }
    document(
        &format!("Log in: {}", provider.title()),
        &format!(
            "<h1>Log in with {}</h1>\n\
             <p class=\"note\">Dev identity provider: synthetic people from <code>data/dev/people.toml</code>. Never use it with real patients.</p>\n\
             <form method=\"post\" action=\"/dev/idp/{}/authorize\">\n\
             <input type=\"hidden\" name=\"request_uri\" value=\"{}\">\n\
             <fieldset><legend>Who are you?</legend>\n<ul>\n{items}</ul>\n</fieldset>\n</form>\n",
            escape(provider.title()),
            escape(segment),
            escape(request_uri),
        ),
    )
}

/// The end-session page.
pub fn logged_out(provider: Provider, origin: &str) -> String {
    document(
        "Logged out",
        &format!(
            "<h1>Logged out</h1>\n<p>You are logged out of the gateway. {} keeps no session of its own.</p>\n\
             <p><a href=\"{}/\">Back to the gateway</a></p>\n",
            escape(provider.title()),
            escape(origin)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_file_cannot_inject_markup() {
        assert_eq!(
            escape("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
    }
}
