//! What `roomcast admin` prints: tables and sentences for people, JSON for scripts.

use comfy_table::{presets, Table};
use serde_json::Value;

/// Where answers go: stdout, as tables or as JSON.
pub struct Output {
    pub json: bool,
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_header(header.iter().copied());
    // Columns as `ps` and `kubectl` print them: flush left, two spaces apart.
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    t
}

/// A JSON string or number as text; `-` for none. Control characters (a room name is anyone's
/// text) are shown as U+FFFD: no escape sequence reaches the terminal, no newline breaks a row.
fn text(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    };
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn yes(v: &Value) -> &'static str {
    if v.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
}

/// Seconds since the epoch as an RFC 3339 UTC time.
fn when(v: &Value) -> String {
    v.as_u64().map_or("-".into(), |secs| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        humantime::format_rfc3339_seconds(t).to_string()
    })
}

/// Names in a JSON array, comma separated; `-` for none.
fn names(v: &Value) -> String {
    let list: Vec<String> = v
        .as_array()
        .map(|a| a.iter().filter(|n| n.is_string()).map(text).collect())
        .unwrap_or_default();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(", ")
    }
}

impl Output {
    fn print_json(&self, v: &Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }

    /// A list of accounts (`/api/admin/users` entries).
    pub fn users(&self, users: &[Value]) {
        if self.json {
            return self.print_json(&serde_json::json!({ "users": users }));
        }
        let mut t = table(&["USERNAME", "ADMIN", "ROOMS", "CREATED"]);
        for u in users {
            t.add_row([
                text(&u["username"]),
                yes(&u["is_admin"]).into(),
                text(&u["rooms_owned"]),
                when(&u["created_at"]),
            ]);
        }
        println!("{}", t.trim_fmt());
    }

    /// A list of rooms (`/api/admin/rooms` entries).
    pub fn rooms(&self, rooms: &[Value]) {
        if self.json {
            return self.print_json(&serde_json::json!({ "rooms": rooms }));
        }
        let mut t = table(&["ID", "NAME", "MODE", "OWNER", "OPEN", "PARTICIPANTS"]);
        for r in rooms {
            let room = &r["room"];
            let mode = match (room["mode"].as_str(), room["locked"].as_bool()) {
                (Some(m), Some(true)) => format!("{m}, locked"),
                (m, _) => m.unwrap_or("-").to_owned(),
            };
            t.add_row([
                text(&room["id"]),
                text(&room["name"]),
                mode,
                text(&r["owner"]),
                yes(&r["open"]).into(),
                names(&r["participants"]),
            ]);
        }
        println!("{}", t.trim_fmt());
    }

    /// A created account, with its password if it was generated.
    pub fn created(&self, answer: &Value) {
        if self.json {
            return self.print_json(answer);
        }
        let user = &answer["user"];
        let kind = if user["is_admin"].as_bool() == Some(true) {
            "administrator"
        } else {
            "user"
        };
        println!("created {kind} {}", text(&user["username"]));
        if let Some(p) = answer["password"].as_str() {
            println!("password: {p}");
        }
    }

    /// A deleted account and the rooms deleted with it.
    pub fn deleted(&self, answer: &Value) {
        if self.json {
            return self.print_json(answer);
        }
        println!("deleted user {}", text(&answer["deleted"]));
        let rooms = names(&answer["deleted_rooms"]);
        if rooms != "-" {
            println!("deleted rooms: {rooms}");
        }
    }

    /// A password reset, with the new password if it was generated.
    pub fn reset(&self, answer: &Value) {
        if self.json {
            return self.print_json(answer);
        }
        println!(
            "password of {} set; their sessions ended",
            text(&answer["user"])
        );
        if let Some(p) = answer["password"].as_str() {
            println!("password: {p}");
        }
    }

    /// A minted invite: the link to share.
    pub fn invite(&self, answer: &Value) {
        if self.json {
            return self.print_json(answer);
        }
        println!("{}", text(&answer["link"]));
        println!(
            "role {}, valid until {}",
            text(&answer["role"]),
            when(&answer["expires_at"])
        );
    }

    /// Anything else: `answer` as JSON, or `sentence`.
    pub fn done(&self, answer: Value, sentence: &str) {
        if self.json {
            return self.print_json(&answer);
        }
        println!("{sentence}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let name = Value::String("a\u{1b}]52;c;cGF5\u{7}\nb".into());
        assert_eq!(text(&name), "a\u{fffd}]52;c;cGF5\u{fffd}\u{fffd}b");
        assert_eq!(names(&serde_json::json!(["x\ry", "z"])), "x\u{fffd}y, z");
    }
}
