//! Topic templates: parsing never panics, and a parsed template renders, whatever the decoded
//! values hold, to a topic with no wildcard or NUL and no extra levels.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ser2mqtt::topic_map::Template;

fuzz_target!(|input: (&str, &str)| {
    let (text, value) = input;
    let Ok(template) = Template::parse(text) else { return };
    let levels = |t: &str| t.matches('/').count();
    let Some(topic) = template.render(|_| Some(value.to_string())) else { return };
    assert!(!topic.contains(['+', '#', '\0']), "{topic:?} from {text:?} with {value:?}");
    let Some(plain) = template.render(|_| Some(String::new())) else { return };
    assert_eq!(levels(&topic), levels(&plain), "a value added topic levels: {topic:?}");
});
