//! Synthetic coding tasks: short Python functions from templates with random constants.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{pick, split_of_index, Draft, WORDS};
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

/// The suite's families, numbered as [`draft`] takes them.
pub(crate) const FAMILIES: &[&str] = &[
    "affine",
    "quad",
    "count_gt",
    "scale",
    "divisible",
    "repeat",
    "replace",
    "max_plus",
];

/// A family's semantic parameters, drawn one by one, with their joint index among all the
/// family's settings: the split is decided on that index, so that even a family with four
/// settings has one in validation and one in test.
struct Setting {
    index: usize,
    count: usize,
}

impl Setting {
    fn new() -> Self {
        Setting { index: 0, count: 1 }
    }

    /// A parameter uniform in `lo..hi`.
    fn int(&mut self, rng: &mut ChaCha8Rng, lo: i64, hi: i64) -> i64 {
        let n = (hi - lo) as usize;
        let i = rng.gen_range(0..n);
        self.index = self.index * n + i;
        self.count *= n;
        lo + i as i64
    }

    /// A parameter uniform over `items`.
    fn item<T: Copy>(&mut self, rng: &mut ChaCha8Rng, items: &[T]) -> T {
        let i = self.int(rng, 0, items.len() as i64);
        items[i as usize]
    }
}

/// One coding task of family `family` (an index into [`FAMILIES`]).
pub(crate) fn draft(rng: &mut ChaCha8Rng, family: usize) -> Draft {
    let name = pick(rng, FN_NAMES);
    let mut setting = Setting::new();
    let (key, desc, arg, body, cases): (String, String, &str, String, Vec<(String, String)>) =
        match family {
            0 => {
                let (a, b) = (setting.int(rng, 2, 10), setting.int(rng, 0, 30));
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
                let a = setting.int(rng, 1, 10);
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
                let k = setting.int(rng, -5, 15);
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
                let k = setting.int(rng, 2, 10);
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
                let k = setting.int(rng, 2, 12);
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
                let k = setting.int(rng, 2, 6) as usize;
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
                let c1 = setting.item(rng, letters) as char;
                let c2 = (b'A' + setting.int(rng, 0, 26) as u8) as char;
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
                let k = setting.int(rng, -10, 10);
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
        split: split_of_index(
            &format!("coding/{}", FAMILIES[family]),
            setting.index,
            setting.count,
        ),
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
            family: None,
        },
    }
}
