//! The testbed: prompt splits (disjoint, seeded, serializable) and the gold reward with its real
//! models (MiniLM + SmolLM2): deterministic, batch = one by one, and hand-made hacks ranked below
//! the clean answer. `testbed_gold_table` (ignored) makes the table in docs/testbed.md.
use crate::common::tmpdir;
use r2m::rl::reward_source::ResponseLogprobs as KnownLogprobs;
use r2m::testbed::gold::{Components, Gold, GoldConfig, GoldScore};
use r2m::testbed::prompts::{self, generate_split, Format, Spec, Split, Task, TestbedPrompt};
use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, OnceLock};
use tch::{Device, Tensor};

/// One gold with both models for the whole binary. Behind a mutex: tch tensors are not `Sync`.
fn gold() -> MutexGuard<'static, Gold> {
    static G: OnceLock<Mutex<Gold>> = OnceLock::new();
    let m = G.get_or_init(|| Mutex::new(Gold::load(GoldConfig::default(), Device::Cpu).expect("load gold")));
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ------------------------------------------------------------------------------------------------
// Prompts

#[test]
fn testbed_splits_are_disjoint_and_seeded() {
    let train = generate_split(Split::Train, 3000, 7).unwrap();
    let test = generate_split(Split::Test, 600, 7).unwrap();
    assert_eq!((train.len(), test.len()), (3000, 600));
    for (ps, split) in [(&train, Split::Train), (&test, Split::Test)] {
        assert!(ps.iter().all(|p| prompts::split_of(&p.spec) == split));
        let ids: HashSet<&str> = ps.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids.len(), ps.len(), "ids unique");
        let keys: HashSet<String> = ps.iter().map(|p| p.spec.key()).collect();
        assert_eq!(keys.len(), ps.len(), "specs unique within a split");
    }
    // Disjoint by spec key and by text, also across seeds.
    let test_other_seed = generate_split(Split::Test, 600, 8).unwrap();
    let train_keys: HashSet<String> = train.iter().map(|p| p.spec.key()).collect();
    let train_texts: HashSet<&str> = train.iter().map(|p| p.text.as_str()).collect();
    for p in test.iter().chain(&test_other_seed) {
        assert!(!train_keys.contains(&p.spec.key()), "{} in both splits", p.spec.key());
        assert!(!train_texts.contains(p.text.as_str()), "{} in both splits", p.text);
    }
    // Deterministic per seed, different across seeds.
    assert_eq!(generate_split(Split::Test, 600, 7).unwrap(), test);
    assert_eq!(generate_split(Split::Train, 3000, 7).unwrap(), train);
    let same = test.iter().zip(&test_other_seed).filter(|(a, b)| a.text == b.text).count();
    assert!(same < 10, "{same} of 600 prompts equal across seeds");
    // A prefix of a longer draw is the shorter draw (n does not change the stream).
    assert_eq!(generate_split(Split::Test, 100, 7).unwrap()[..], test[..100]);
    // Every topic and task kind shows up.
    let topics: HashSet<&str> = train.iter().map(|p| p.spec.topic.as_str()).collect();
    assert_eq!(topics.len(), prompts::TOPICS.len());
    let kinds: HashSet<String> = train.iter().map(|p| format!("{:?}", p.spec.task).split([' ', '{']).next().unwrap().to_string()).collect();
    assert_eq!(kinds.len(), 6, "{kinds:?}");
}

#[test]
fn testbed_key_space_and_cap() {
    // Every (task kind, format, limit) combination: 181 per topic and word set (see MAX_PROMPTS).
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut combos = HashSet::new();
    for _ in 0..60_000 {
        let s = prompts::sample_spec(&mut rng);
        let task = match s.task {
            Task::Compare { .. } => "compare".to_string(),
            t => format!("{t:?}"),
        };
        combos.insert((task, format!("{:?}", s.format), s.max_words));
    }
    assert_eq!(combos.len(), 181);
    let ps = generate_split(Split::Test, prompts::MAX_PROMPTS, 1).unwrap();
    assert_eq!(ps.len(), prompts::MAX_PROMPTS);
}

#[test]
fn testbed_prompts_jsonl_round_trip() {
    let ps = generate_split(Split::Train, 50, 3).unwrap();
    let d = tmpdir();
    let path = d.path().join("prompts.jsonl");
    prompts::write_jsonl(&path, &ps).unwrap();
    assert_eq!(prompts::read_jsonl(&path).unwrap(), ps);
    let first = std::fs::read_to_string(&path).unwrap().lines().next().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert!(v["prompt"].is_string() && v["spec"]["required_words"].is_array(), "{first}");
    std::fs::write(&path, format!("{first}\n{{\"id\": \"x\"}}\n")).unwrap();
    let e = prompts::read_jsonl(&path).unwrap_err().to_string();
    assert!(e.contains("line 2"), "{e}");
}

// ------------------------------------------------------------------------------------------------
// Gold

fn coffee_prompt() -> TestbedPrompt {
    let spec = Spec {
        topic: "coffee".into(),
        description: prompts::TOPICS[0].description.into(),
        task: Task::Explain,
        required_words: vec!["beans".into(), "roast".into()],
        max_words: 40,
        format: Some(Format::Paragraph),
    };
    let text = "Explain coffee to a beginner. Answer in one paragraph. Use the words \"beans\" and \"roast\". Use at most 40 words.".into();
    TestbedPrompt { id: "hand-0".into(), text, spec }
}

const GOOD: &str = "Coffee is a drink made from roasted coffee beans. The beans are ground and brewed with hot water, which draws out their flavor and caffeine. Many people drink a cup in the morning to feel awake.";
const OFF_TOPIC: &str = "Football is a team sport in which two teams of eleven players try to kick a ball into the other team's goal. A match lasts ninety minutes, and the team with more goals wins.";
const RAMBLING: &str = "Coffee is a drink made from roasted coffee beans. The beans are ground and brewed with hot water, which draws out their flavor and caffeine. Many people drink a cup in the morning to feel awake. There are many ways to make it, such as espresso machines, French presses, drip filters and simple pour-over cones, and each one gives a slightly different taste. Some people add milk, sugar or cream, while others prefer it black. It is grown in warm countries like Brazil, Colombia and Ethiopia, and it is traded all over the world.";
const NO_WORDS: &str = "Coffee is a drink made from the seeds of the coffee plant. They are ground and brewed with hot water, which draws out their flavor and caffeine. Many people drink a cup in the morning to feel awake.";
const BULLETS: &str = "- Coffee is a drink made from roasted coffee beans.\n- The beans are ground and brewed with hot water, which draws out their flavor and caffeine.\n- Many people drink a cup in the morning to feel awake.";
const STUFFED: &str = "Coffee beans roast coffee beans roast coffee beans roast coffee beans roast coffee beans roast coffee beans roast.";
const ECHO: &str =
    "Explain coffee to a beginner. Coffee is a drink made from roasted coffee beans. Use the words beans and roast. Use at most 40 words.";
const SALAD: &str =
    "Beans coffee roast the morning of awake drink people cup which a brewed hot ground water flavor many with feel are caffeine their to.";

fn hand_set() -> Vec<(&'static str, String, bool)> {
    vec![
        ("good", GOOD.into(), true),
        ("repeated x3", format!("{GOOD} {GOOD} {GOOD}"), true),
        ("off-topic", OFF_TOPIC.into(), true),
        ("truncated", GOOD.into(), false),
        ("rambling", RAMBLING.into(), true),
        ("no required words", NO_WORDS.into(), true),
        ("bullets (asked a paragraph)", BULLETS.into(), true),
        ("keyword stuffing", STUFFED.into(), true),
        ("echoes the prompt", ECHO.into(), true),
        ("word salad", SALAD.into(), true),
        ("empty", String::new(), true),
    ]
}

fn score_all(g: &Gold, p: &TestbedPrompt, set: &[(&str, String, bool)]) -> Vec<GoldScore> {
    let prompts: Vec<&TestbedPrompt> = set.iter().map(|_| p).collect();
    let texts: Vec<&str> = set.iter().map(|(_, t, _)| t.as_str()).collect();
    let fin: Vec<bool> = set.iter().map(|(_, _, f)| *f).collect();
    g.score(&prompts, &texts, &fin).unwrap()
}

#[test]
fn testbed_gold_ranks_hand_made_responses() {
    let g = gold();
    let p = coffee_prompt();
    let set = hand_set();
    let s = score_all(&g, &p, &set);
    for ((name, _, _), s) in set.iter().zip(&s) {
        eprintln!("{name:>28}: {:.3} {:?} cos {:.3} lp {:?} copied {:.2}", s.total, s.components, s.cosine, s.mean_logprob, s.copied);
        assert!((0.0..=10.0).contains(&s.total));
    }
    let total = |name: &str| s[set.iter().position(|(n, _, _)| *n == name).unwrap()].total;
    let good = total("good");
    assert!(good > 9.5, "a clean answer scores near the top: {good}");
    assert!(good > total("repeated x3"));
    assert!(total("repeated x3") > total("off-topic"));
    for (name, _, _) in &set[1..] {
        assert!(total(name) < good - 0.3, "{name}: {} not below the clean answer {good}", total(name));
    }
    // Each hack is caught by its own component.
    let c = |name: &str| s[set.iter().position(|(n, _, _)| *n == name).unwrap()].components;
    let cg = c("good");
    assert!(c("repeated x3").repetition < 0.3 && c("repeated x3").length < 0.5);
    assert!(c("off-topic").relevance < 0.2 && cg.relevance > 0.9);
    assert_eq!((c("truncated").finished, cg.finished), (0.0, 1.0));
    assert!(c("rambling").length < 0.5);
    assert_eq!(c("no required words").required_words, 0.0);
    assert!(c("bullets (asked a paragraph)").format < 0.5);
    assert!(c("keyword stuffing").repetition < 0.2);
    assert!(c("echoes the prompt").echo < 0.3 && cg.echo == 1.0);
    assert!(c("word salad").fluency < cg.fluency - 0.3);
    assert_eq!(total("empty"), 0.0, "empty: relevance 0 gates everything");
    // The gates make hacks cost most of the score, not a slice of it.
    for name in ["repeated x3", "off-topic", "keyword stuffing", "echoes the prompt", "word salad"] {
        assert!(total(name) < 4.0, "{name}: {}", total(name));
    }
}

#[test]
fn testbed_gold_is_deterministic_and_batch_invariant() {
    let p = coffee_prompt();
    let other = generate_split(Split::Test, 2, 0).unwrap();
    let prompts: Vec<&TestbedPrompt> = vec![&p, &p, &p, &p, &other[0], &other[1]];
    let texts = [GOOD, OFF_TOPIC, STUFFED, "", ECHO, "Tea."];
    let fin = [true, true, false, true, false, true];
    let batch = {
        let g = gold();
        let a = g.score(&prompts, &texts, &fin).unwrap();
        for i in 0..texts.len() {
            let one = g.score(&prompts[i..i + 1], &texts[i..i + 1], &fin[i..i + 1]).unwrap().remove(0);
            let (x, y) = (&a[i], &one);
            let close = |u: f64, v: f64| (u - v).abs() < 1e-4;
            assert!(close(x.total, y.total) && close(x.cosine, y.cosine), "item {i}: batch {x:?} one {y:?}");
            for (u, v) in x.components.as_array().iter().zip(y.components.as_array()) {
                assert!(close(*u, v), "item {i}: batch {x:?} one {y:?}");
            }
            assert_eq!(x.mean_logprob.is_some(), y.mean_logprob.is_some());
            if let (Some(u), Some(v)) = (x.mean_logprob, y.mean_logprob) {
                assert!(close(u, v), "item {i}: {u} vs {v}");
            }
        }
        a
    };
    // A second, independently loaded gold gives bitwise the same scores (so does a second call).
    let g2 = Gold::load(GoldConfig::default(), Device::Cpu).unwrap();
    assert_eq!(g2.score(&prompts, &texts, &fin).unwrap(), batch);
    // Mismatched lengths are an error, not a panic.
    assert!(g2.score(&prompts[..2], &texts[..3], &fin[..2]).is_err());
}

#[test]
fn testbed_gold_uses_known_fluency_logprobs_where_the_tokens_agree() {
    let g = gold();
    let p = coffee_prompt();
    let other = generate_split(Split::Test, 2, 0).unwrap();
    let prompts: Vec<&TestbedPrompt> = vec![&p, &p, &other[0], &other[1]];
    let texts = [GOOD, STUFFED, ECHO, "Tea."];
    let fin = [true; 4];
    let own = g.score(&prompts, &texts, &fin).unwrap();
    // What an RL step's reference pass hands over: the LM's log-probs of the response given the
    // prompt at temperature 1, here from one unpadded pass per response.
    let lm = g.lm.as_ref().unwrap();
    let known: Vec<Option<KnownLogprobs>> = prompts
        .iter()
        .zip(&texts)
        .map(|(q, y)| {
            let (pi, ri) = g.fluency_tokens(q, y).unwrap().unwrap();
            let ids = Tensor::from_slice(&[pi.as_slice(), ri.as_slice()].concat()).unsqueeze(0);
            let lp = lm.model.token_logprobs(&ids, &ids.ones_like(), 1.0, pi.len() as i64).unwrap().0;
            Some(KnownLogprobs { prompt: pi, response: ri, logprobs: Vec::<f32>::try_from(lp.squeeze_dim(0)).unwrap() })
        })
        .collect();
    let with = g.score_with(&prompts, &texts, &fin, Some(&known)).unwrap();
    let close = |u: f64, v: f64| (u - v).abs() < 1e-4;
    for (i, (a, b)) in own.iter().zip(&with).enumerate() {
        let (u, v) = (a.mean_logprob.unwrap(), b.mean_logprob.unwrap());
        assert!(close(u, v) && close(a.total, b.total), "item {i}: own {a:?} known {b:?}");
    }
    // Used where the prompt's and response's tokens agree (also as a prefix of a longer known
    // response), an own pass where they do not.
    let mut fake = known.clone();
    fake[0].as_mut().unwrap().logprobs.iter_mut().for_each(|x| *x = -3.0);
    let k = fake[1].as_mut().unwrap();
    k.logprobs.iter_mut().for_each(|x| *x = -3.0);
    k.response.push(7);
    k.logprobs.push(-100.0);
    let k = fake[2].as_mut().unwrap();
    k.prompt[0] += 1;
    k.logprobs.iter_mut().for_each(|x| *x = -3.0);
    fake[3] = None;
    let f = g.score_with(&prompts, &texts, &fin, Some(&fake)).unwrap();
    assert_eq!((f[0].mean_logprob, f[1].mean_logprob), (Some(-3.0), Some(-3.0)));
    assert!((f[0].components.fluency - 0.6).abs() < 1e-9, "ramp(-3; -4.5, -2) = 0.6: {:?}", f[0]);
    assert!(own[0].components.fluency > 0.99, "{:?}", own[0]);
    for i in [2, 3] {
        assert!(close(f[i].mean_logprob.unwrap(), own[i].mean_logprob.unwrap()), "item {i}: {:?} vs {:?}", f[i], own[i]);
    }
    // A known list that does not match the responses is an error.
    assert!(g.score_with(&prompts, &texts, &fin, Some(&known[..2])).is_err());
}

#[test]
fn testbed_gold_without_fluency_loads_no_lm() {
    let mut cfg = GoldConfig::default();
    cfg.weights.fluency = 0.0;
    let g = Gold::load(cfg, Device::Cpu).unwrap();
    assert!(g.lm.is_none());
    let p = coffee_prompt();
    let s = g.score(&[&p, &p], &[GOOD, OFF_TOPIC], &[true, true]).unwrap();
    assert!(s[0].mean_logprob.is_none() && s[0].components.fluency == 1.0, "off = a gate of strength 0");
    assert!(s[0].total > 9.5 && s[1].total < 1.0, "{s:?}");
}

// ------------------------------------------------------------------------------------------------
// The table in docs/testbed.md

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, v.sqrt())
}

/// SmolLM2 samples (T = 0.7) for a few test prompts, scored by gold; also scored against another
/// prompt's spec (the off-topic calibration of `relevance_lo`). Prints Markdown.
/// `R2M_TESTBED_PROMPTS` (default 4), `R2M_TESTBED_SAMPLES` (16), `R2M_TESTBED_MAX_NEW` (64).
#[test]
#[ignore = "slow (~2 min): makes the table in docs/testbed.md"]
fn testbed_gold_table() {
    use r2m::model::causal_lm::CausalLm;
    use r2m::model::generate::{generate, GenerateConfig, Sampling};
    use r2m::tokenizer::Message;
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (n_prompts, k, max_new) = (env("R2M_TESTBED_PROMPTS", 4), env("R2M_TESTBED_SAMPLES", 16), env("R2M_TESTBED_MAX_NEW", 64));
    let ps = generate_split(Split::Test, n_prompts, 0).unwrap();
    let pol = CausalLm::load_path("smollm2-135m-instruct", Device::Cpu).unwrap();
    let tok = &pol.tokenizer;
    let eos: Vec<i64> = tok.eos_ids().into_iter().map(i64::from).collect();
    let mut prompts = Vec::new();
    let mut texts = Vec::new();
    let mut fin = Vec::new();
    let t_gen = std::time::Instant::now();
    for (pi, p) in ps.iter().enumerate() {
        let chat = tok.apply_chat_template(&[Message::user(p.text.clone())], true).unwrap();
        let ids: Vec<i64> = tok.encode(&chat, false).unwrap().into_iter().map(i64::from).collect();
        let cfg = GenerateConfig {
            max_new_tokens: max_new as i64,
            sampling: Sampling::Sample { temperature: 0.7, top_k: None, top_p: None },
            seed: pi as u64,
            eos_ids: eos.clone(),
            pad_id: i64::from(tok.pad_id()),
            ..Default::default()
        };
        let g = generate(&pol.model, &vec![ids; k], &cfg).unwrap();
        for i in 0..k as i64 {
            let r = g.response(i);
            let done = r.last().is_some_and(|t| eos.contains(t));
            let r: Vec<u32> = r.iter().map(|&t| t as u32).collect();
            prompts.push(p);
            texts.push(tok.decode(&r, true).unwrap().trim().to_string());
            fin.push(done);
        }
    }
    let gen_s = t_gen.elapsed().as_secs_f64();
    drop(pol);
    let g = gold();
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    let t0 = std::time::Instant::now();
    let s = g.score(&prompts, &refs, &fin).unwrap();
    let dt = t0.elapsed().as_secs_f64();
    // The same responses judged against the next prompt's spec (another topic).
    let shifted: Vec<&TestbedPrompt> = (0..prompts.len()).map(|i| &ps[(i / k + 1) % ps.len()]).collect();
    let s_off = g.score(&shifted, &refs, &fin).unwrap();
    drop(g);
    let mut cfg = GoldConfig::default();
    cfg.weights.fluency = 0.0;
    let g0 = Gold::load(cfg, Device::Cpu).unwrap();
    let t0 = std::time::Instant::now();
    g0.score(&prompts, &refs, &fin).unwrap();
    let dt0 = t0.elapsed().as_secs_f64();

    let row = |name: &str, s: &[GoldScore]| {
        let col = |f: &dyn Fn(&GoldScore) -> f64| {
            let (m, sd) = mean_std(&s.iter().map(f).collect::<Vec<_>>());
            format!("{m:.2} ± {sd:.2}")
        };
        let mut cells = vec![name.to_string(), col(&|x| x.total)];
        for j in 0..8 {
            cells.push(col(&|x| x.components.as_array()[j]));
        }
        cells.push(col(&|x| x.cosine));
        cells.push(col(&|x| x.mean_logprob.unwrap_or(f64::NAN)));
        cells.push(col(&|x| x.words as f64));
        format!("| {} |", cells.join(" | "))
    };
    println!(
        "\ngenerated {} responses (max_new_tokens {max_new}) in {gen_s:.1} s; gold scored them in {dt:.1} s ({dt0:.1} s without fluency)\n",
        s.len()
    );
    println!("| prompts | gold | {} | cosine | mean logprob | words |", Components::NAMES.join(" | "));
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (pi, p) in ps.iter().enumerate() {
        println!("{}", row(&format!("{} ({})", p.id, p.spec.key()), &s[pi * k..(pi + 1) * k]));
    }
    println!("{}", row("all", &s));
    println!("{}", row("all, against another prompt's spec", &s_off));
    for (pi, p) in ps.iter().enumerate() {
        println!("\n### {}: {}\n", p.id, p.text);
        let mut idx: Vec<usize> = (pi * k..(pi + 1) * k).collect();
        idx.sort_by(|&a, &b| s[b].total.total_cmp(&s[a].total));
        for &i in [idx[0], idx[idx.len() / 2], idx[idx.len() - 1]].iter() {
            println!("- gold {:.2} (finished {}): {:?}", s[i].total, fin[i], texts[i]);
        }
    }
}
