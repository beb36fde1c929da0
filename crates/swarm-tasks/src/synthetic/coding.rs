//! Synthetic coding tasks: short Python functions from templates with random constants.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{pick, Draft, WORDS};
use crate::episode::{Episode, Task};
use crate::prompt::{coding_prompt, fenced};
use crate::skills::coding::CodingTask;

const FN_NAMES: &[&str] = &[
    "f",
    "g",
    "h",
    "compute",
    "solve",
    "transform",
    "calc",
    "result",
    "apply",
    "process",
    "value_of",
    "answer",
];
const INT_ARGS: &[&str] = &["x", "n", "k", "a", "num", "value"];
const LIST_ARGS: &[&str] = &["xs", "nums", "values", "items", "arr", "data"];
const STR_ARGS: &[&str] = &["s", "text", "word", "string"];

fn py_list(v: &[i64]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn rand_list(rng: &mut ChaCha8Rng) -> Vec<i64> {
    let len = rng.gen_range(0..7);
    (0..len).map(|_| rng.gen_range(-9..20)).collect()
}

fn py_str(s: &str) -> String {
    format!("'{s}'")
}

/// One coding task.
pub(crate) fn draft(rng: &mut ChaCha8Rng) -> Draft {
    let name = pick(rng, FN_NAMES);
    let family = rng.gen_range(0..8);
    let (key, desc, arg, body, cases): (String, String, &str, String, Vec<(String, String)>) =
        match family {
            0 => {
                let (a, b) = (rng.gen_range(2..10i64), rng.gen_range(0..30i64));
                let arg = pick(rng, INT_ARGS);
                let cases = (0..4)
                    .map(|_| {
                        let x = rng.gen_range(-20..50i64);
                        (x.to_string(), (a * x + b).to_string())
                    })
                    .collect();
                (
                    format!("affine/{a}/{b}"),
                    format!("{arg} * {a} + {b}"),
                    arg,
                    format!("return {arg} * {a} + {b}"),
                    cases,
                )
            }
            1 => {
                let a = rng.gen_range(1..10i64);
                let arg = pick(rng, INT_ARGS);
                let cases = (0..4)
                    .map(|_| {
                        let x = rng.gen_range(-10..15i64);
                        (x.to_string(), (x * x - a * x).to_string())
                    })
                    .collect();
                (
                    format!("quad/{a}"),
                    format!("the square of {arg} minus {a} times {arg}"),
                    arg,
                    format!("return {arg} * {arg} - {a} * {arg}"),
                    cases,
                )
            }
            2 => {
                let k = rng.gen_range(-5..15i64);
                let arg = pick(rng, LIST_ARGS);
                let cases = (0..4)
                    .map(|_| {
                        let v = rand_list(rng);
                        let c = v.iter().filter(|&&x| x > k).count();
                        (py_list(&v), c.to_string())
                    })
                    .collect();
                (
                    format!("count_gt/{k}"),
                    format!("the number of elements of the list {arg} that are greater than {k}"),
                    arg,
                    format!("return sum(1 for v in {arg} if v > {k})"),
                    cases,
                )
            }
            3 => {
                let k = rng.gen_range(2..10i64);
                let arg = pick(rng, LIST_ARGS);
                let cases = (0..4)
                    .map(|_| {
                        let v = rand_list(rng);
                        let r: Vec<i64> = v.iter().map(|x| x * k).collect();
                        (py_list(&v), py_list(&r))
                    })
                    .collect();
                (
                    format!("scale/{k}"),
                    format!("a new list with every element of the list {arg} multiplied by {k}"),
                    arg,
                    format!("return [v * {k} for v in {arg}]"),
                    cases,
                )
            }
            4 => {
                let k = rng.gen_range(2..12i64);
                let arg = pick(rng, INT_ARGS);
                let cases = (0..4)
                    .map(|_| {
                        let x = rng.gen_range(-30..100i64);
                        let r = if x % k == 0 { "True" } else { "False" };
                        (x.to_string(), r.to_string())
                    })
                    .collect();
                (
                    format!("divisible/{k}"),
                    format!("True if {arg} is divisible by {k}, and False otherwise"),
                    arg,
                    format!("return {arg} % {k} == 0"),
                    cases,
                )
            }
            5 => {
                let k = rng.gen_range(2..6usize);
                let arg = pick(rng, STR_ARGS);
                let cases = (0..4)
                    .map(|_| {
                        let w = pick(rng, WORDS);
                        let w = &w[..rng.gen_range(1..=w.len())];
                        (py_str(w), py_str(&w.repeat(k)))
                    })
                    .collect();
                (
                    format!("repeat/{k}"),
                    format!("the string {arg} repeated {k} times"),
                    arg,
                    format!("return {arg} * {k}"),
                    cases,
                )
            }
            6 => {
                let letters = b"aeiourstln";
                let c1 = letters[rng.gen_range(0..letters.len())] as char;
                let c2 = (b'A' + rng.gen_range(0..26u8)) as char;
                let arg = pick(rng, STR_ARGS);
                let cases = (0..4)
                    .map(|_| {
                        let w = pick(rng, WORDS);
                        (py_str(w), py_str(&w.replace(c1, &c2.to_string())))
                    })
                    .collect();
                (
                    format!("replace/{c1}/{c2}"),
                    format!("the string {arg} with every '{c1}' replaced by '{c2}'"),
                    arg,
                    format!("return {arg}.replace('{c1}', '{c2}')"),
                    cases,
                )
            }
            _ => {
                let k = rng.gen_range(-10..10i64);
                let arg = pick(rng, LIST_ARGS);
                let cases = (0..4)
                    .map(|_| {
                        let mut v = rand_list(rng);
                        if v.is_empty() {
                            v.push(rng.gen_range(-9..20));
                        }
                        let m = v.iter().copied().max().unwrap_or(0) + k;
                        (py_list(&v), m.to_string())
                    })
                    .collect();
                (
                    format!("max_plus/{k}"),
                    format!("the largest element of the non-empty list {arg} plus {k}"),
                    arg,
                    format!("return max({arg}) + {k}"),
                    cases,
                )
            }
        };
    let tests: Vec<String> = cases
        .iter()
        .map(|(input, want)| format!("assert {name}({input}) == {want}"))
        .collect();
    let text = format!("Write a Python function `{name}({arg})` that returns {desc}.");
    let shown = tests.first().cloned().into_iter().collect::<Vec<_>>();
    let gold = format!("def {name}({arg}):\n    {body}\n");
    Draft {
        key: format!("coding/{key}"),
        episode: Episode {
            id: String::new(),
            suite: String::new(),
            prompt: coding_prompt(&text, &shown),
            max_rounds: 1,
            task: Task::Coding(CodingTask {
                entry_point: Some(name.to_string()),
                stub: None,
                setup: String::new(),
                tests,
            }),
            gold: vec![fenced("python", &gold)],
        },
    }
}
