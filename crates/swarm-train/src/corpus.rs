//! The toy world's training text: general documents and chats generated from a seed, and chats
//! from each skill's synthetic training split (the gold answer as the assistant's reply).
//!
//! "General" text is a small grammar of English sentences plus generic chat tasks (repeat,
//! copy, reverse, spell, add) with a generic system prompt: enough to give the base ChatML's shape
//! and a vocabulary, and no skill.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use swarm_model::ChatMessage;
use swarm_tasks::{generate_synthetic, Role, Skill, Split};

/// A chat whose last turn is the assistant's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatExample {
    /// The prompt (system + user).
    pub prompt: Vec<ChatMessage>,
    /// The assistant's reply (the only tokens with a loss).
    pub answer: String,
}

/// One training document.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// Plain text, every token trained.
    Text(String),
    /// A chat, only the answer trained.
    Chat(ChatExample),
}

impl Document {
    /// Every piece of text in the document (for tokenizer training).
    pub fn texts(&self) -> Vec<&str> {
        match self {
            Document::Text(t) => vec![t.as_str()],
            Document::Chat(c) => {
                let mut v: Vec<&str> = c.prompt.iter().map(|m| m.content.as_str()).collect();
                v.push(&c.answer);
                v
            }
        }
    }
}

/// The system prompt of general chats.
pub const GENERAL_SYSTEM: &str = "You are a helpful assistant.";

const NOUNS: &[&str] = &[
    "cat", "dog", "river", "table", "garden", "teacher", "city", "window", "song", "letter",
    "machine", "program", "file", "number", "list", "word", "computer", "friend", "market", "road",
    "book", "question", "answer", "table", "server", "student", "product", "line",
];
const ADJECTIVES: &[&str] = &[
    "small", "large", "quiet", "bright", "old", "new", "green", "simple", "careful", "quick",
    "empty", "long", "short", "happy", "strange", "useful",
];
const VERBS: &[&str] = &[
    "sees", "finds", "opens", "writes", "reads", "counts", "moves", "likes", "builds", "checks",
    "sorts", "prints", "keeps", "changes", "follows", "lists",
];
const ADVERBS: &[&str] = &[
    "slowly", "often", "today", "again", "quickly", "never", "always",
];
const NAMES: &[&str] = &[
    "Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jack",
];
const WORDS: &[&str] = &[
    "apple", "river", "stone", "cloud", "tiger", "maple", "orbit", "pixel", "delta", "ember",
    "frost", "grape", "honey", "ivory", "jelly", "koala", "lemon", "mango", "noble", "ocean",
    "pearl", "quilt", "robin", "solar", "tulip", "umber", "vivid", "willow", "yacht", "zebra",
];

fn pick<'a>(rng: &mut ChaCha8Rng, items: &[&'a str]) -> &'a str {
    items[rng.gen_range(0..items.len())]
}

fn sentence(rng: &mut ChaCha8Rng) -> String {
    let subject = if rng.gen_bool(0.4) {
        pick(rng, NAMES).to_string()
    } else {
        format!("The {} {}", pick(rng, ADJECTIVES), pick(rng, NOUNS))
    };
    match rng.gen_range(0..5) {
        0 => format!(
            "{subject} {} the {} {}.",
            pick(rng, VERBS),
            pick(rng, NOUNS),
            pick(rng, ADVERBS)
        ),
        1 => format!(
            "{subject} {} {} {}s.",
            pick(rng, VERBS),
            rng.gen_range(2..100),
            pick(rng, NOUNS)
        ),
        2 => format!(
            "{subject} {} a {} {} near the {}.",
            pick(rng, VERBS),
            pick(rng, ADJECTIVES),
            pick(rng, NOUNS),
            pick(rng, NOUNS)
        ),
        3 => format!(
            "There are {} {}s in the {}, and {} of them are {}.",
            rng.gen_range(3..60),
            pick(rng, NOUNS),
            pick(rng, NOUNS),
            rng.gen_range(1..3),
            pick(rng, ADJECTIVES)
        ),
        _ => format!(
            "Is the {} {}? {subject} says it is.",
            pick(rng, NOUNS),
            pick(rng, ADJECTIVES)
        ),
    }
}

/// A paragraph of 2-5 sentences.
fn paragraph(rng: &mut ChaCha8Rng) -> String {
    let n = rng.gen_range(2..6);
    (0..n).map(|_| sentence(rng)).collect::<Vec<_>>().join(" ")
}

fn general_chat(rng: &mut ChaCha8Rng) -> ChatExample {
    let words: Vec<&str> = (0..rng.gen_range(2..5)).map(|_| pick(rng, WORDS)).collect();
    // Half of the general chats are copies (families 6 and 7 drawn from 0..12).
    let (user, answer) = match rng.gen_range(0..12) {
        // Verbatim copies of word/number/operator spans: the general skill every task answer
        // leans on (names, constants and paths are copied from the request), taught without
        // any skill's syntax.
        6..=9 => {
            let line = copy_line(rng);
            (format!("Copy this exactly: {line}"), line)
        }
        10 | 11 => {
            let n = rng.gen_range(0..200);
            (format!("Repeat the number {n}."), n.to_string())
        }
        0 => {
            let w = pick(rng, WORDS);
            (format!("Repeat the word {w}."), w.to_string())
        }
        1 => {
            let mut r = words.clone();
            r.reverse();
            (
                format!("Write these words in reverse order: {}", words.join(" ")),
                r.join(" "),
            )
        }
        2 => {
            let w = pick(rng, WORDS);
            (
                format!("Spell the word {w} in capital letters."),
                w.to_uppercase(),
            )
        }
        3 => {
            let (a, b) = (rng.gen_range(0..50), rng.gen_range(0..50));
            (format!("What is {a} plus {b}?"), (a + b).to_string())
        }
        4 => (
            format!("How many words are in this list: {}?", words.join(" ")),
            words.len().to_string(),
        ),
        _ => {
            let mut s = words.clone();
            s.sort();
            (
                format!("Sort these words alphabetically: {}", words.join(" ")),
                s.join(" "),
            )
        }
    };
    ChatExample {
        prompt: vec![ChatMessage::system(GENERAL_SYSTEM), ChatMessage::user(user)],
        answer,
    }
}

/// A random span of words, numbers and operators for the copy chats.
fn copy_line(rng: &mut ChaCha8Rng) -> String {
    const SYMBOLS: &[&str] = &[
        "+", "-", "*", "=", ">", "<", "%", "/", ",", ".", "(", ")", ":", "_",
    ];
    const EXTENSIONS: &[&str] = &["txt", "log", "dat", "md", "csv"];
    (0..rng.gen_range(3..9))
        .map(|_| match rng.gen_range(0..6) {
            0 => pick(rng, WORDS).to_string(),
            1 => rng.gen_range(0..100).to_string(),
            2 => pick(rng, SYMBOLS).to_string(),
            // A quoted letter, either case: single characters are the hardest tokens to copy.
            3 => {
                let letter = char::from(b'a' + rng.gen_range(0..26u8));
                let letter = if rng.gen_bool(0.5) {
                    letter.to_ascii_uppercase()
                } else {
                    letter
                };
                format!("'{letter}'")
            }
            4 => format!("{}.{}", pick(rng, WORDS), pick(rng, EXTENSIONS)),
            _ => format!("{}_{}", pick(rng, WORDS), pick(rng, WORDS)),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `n` general documents (about `chat_share` of them chats), deterministic in `seed`.
pub fn general_documents(n: usize, chat_share: f64, seed: u64) -> Vec<Document> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6765_6e65_7261_6c00);
    (0..n)
        .map(|_| {
            if rng.gen_bool(chat_share.clamp(0.0, 1.0)) {
                Document::Chat(general_chat(&mut rng))
            } else {
                Document::Text(paragraph(&mut rng))
            }
        })
        .collect()
}

/// `n` chats from a skill's synthetic training split.
pub fn skill_documents(skill: Skill, n: usize, seed: u64) -> Vec<Document> {
    generate_synthetic(skill, Split::Train, n, seed)
        .into_iter()
        .filter_map(|ep| {
            let answer = ep.gold.first()?.clone();
            Some(Document::Chat(ChatExample {
                prompt: ep.prompt.iter().map(to_model_message).collect(),
                answer,
            }))
        })
        .collect()
}

/// A swarm-tasks message as the chat template expects it.
pub fn to_model_message(m: &swarm_tasks::ChatMessage) -> ChatMessage {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    ChatMessage::new(role, m.content.clone())
}

/// Shuffles documents deterministically.
pub fn shuffle(docs: &mut [Document], seed: u64) {
    docs.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x7368_7566_666c_6500));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn general_documents_are_deterministic_and_mixed() {
        let a = general_documents(50, 0.3, 1);
        assert_eq!(a, general_documents(50, 0.3, 1));
        assert_ne!(a, general_documents(50, 0.3, 2));
        assert!(a.iter().any(|d| matches!(d, Document::Chat(_))));
        assert!(a.iter().any(|d| matches!(d, Document::Text(_))));
    }

    #[test]
    fn skill_documents_carry_gold_answers() {
        for skill in Skill::ALL {
            let docs = skill_documents(skill, 5, 0);
            assert_eq!(docs.len(), 5);
            for d in docs {
                let Document::Chat(c) = d else {
                    panic!("not a chat")
                };
                assert!(c.answer.starts_with("```"), "{}", c.answer);
                assert_eq!(c.prompt[0].role, "system");
            }
        }
    }
}
