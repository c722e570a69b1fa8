//! Fuzzing the readers of untrusted files (`r2m::fuzz`): every target over a seed corpus of real
//! files, then their mutants for a few seconds (R2M_FUZZ_SECS per target, default 3). No input may
//! panic or hang; a failing input is written to target/fuzz-failures/ for a regression test.
use crate::common::{python, tmpdir};
use r2m::fuzz::{fuzz, Target};
use std::path::Path;
use std::time::Duration;

fn budget() -> Duration {
    Duration::from_secs_f64(std::env::var("R2M_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0))
}

/// Runs `target` on `corpus` in `dir`; on a failure, saves the input and panics naming it.
fn campaign(target: Target, corpus: Vec<Vec<u8>>, dir: &Path) {
    assert!(!corpus.is_empty(), "{target:?}: an empty seed corpus");
    match fuzz(target, &corpus, budget(), 0x5eed ^ target as u64, dir) {
        Ok(s) => assert!(s.inputs > corpus.len(), "{target:?}: only the corpus ran ({} inputs)", s.inputs),
        Err(f) => {
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
            std::fs::create_dir_all(&out).unwrap();
            let file = out.join(format!("{:?}-{:016x}.bin", f.target, f.input.iter().fold(0u64, |h, &b| h.rotate_left(5) ^ b as u64)));
            std::fs::write(&file, &f.input).unwrap();
            panic!("{:?}: an input {}; saved to {}", f.target, f.what, file.display());
        }
    }
}

const GGUF_SCRIPT: &str = r#"
import sys, numpy as np, gguf
out = sys.argv[1]
rng = np.random.default_rng(0)
t = lambda *s: rng.standard_normal(s).astype(np.float32)
w = gguf.GGUFWriter(f"{out}/tiny.gguf", "llama")
w.add_block_count(1); w.add_context_length(64); w.add_embedding_length(8)
w.add_feed_forward_length(16); w.add_head_count(2); w.add_head_count_kv(2)
w.add_layer_norm_rms_eps(1e-5); w.add_rope_freq_base(10000.0)
w.add_tokenizer_model("gpt2"); w.add_token_list(["a", "b", "ab", "<s>"]); w.add_token_merges(["a b"])
w.add_bos_token_id(3); w.add_eos_token_id(3)
w.add_chat_template("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
for name, shape in [("token_embd.weight", (4, 8)), ("output_norm.weight", (8,)), ("blk.0.attn_norm.weight", (8,)),
                    ("blk.0.attn_q.weight", (8, 8)), ("blk.0.attn_k.weight", (8, 8)), ("blk.0.attn_v.weight", (8, 8)),
                    ("blk.0.attn_output.weight", (8, 8)), ("blk.0.ffn_norm.weight", (8,)),
                    ("blk.0.ffn_gate.weight", (16, 8)), ("blk.0.ffn_up.weight", (16, 8)), ("blk.0.ffn_down.weight", (8, 16))]:
    w.add_tensor(name, t(*shape))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
"#;

#[test]
fn gguf_files_never_panic_or_hang() {
    let d = tmpdir();
    python(GGUF_SCRIPT, &[d.path().to_str().unwrap()]);
    let seed = std::fs::read(d.path().join("tiny.gguf")).unwrap();
    let work = d.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    assert!(Target::Gguf.run(&seed, &work).is_ok(), "the seed loads");
    campaign(Target::Gguf, vec![seed], &work);
}

#[test]
fn safetensors_tokenizers_and_chat_templates_never_panic_or_hang() {
    let d = tmpdir();
    crate::rl::tiny_world(d.path());
    let policy = d.path().join("policy");
    let st = std::fs::read(policy.join("model.safetensors")).unwrap();
    let work = d.path().join("st");
    std::fs::create_dir_all(&work).unwrap();
    campaign(Target::Safetensors, vec![st], &work);

    // tokenizer.json beside the policy's tokenizer_config.json; the word-level one and MiniLM's
    // WordPiece one as seeds.
    let work = d.path().join("tok");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::copy(policy.join("tokenizer_config.json"), work.join("tokenizer_config.json")).unwrap();
    let mut seeds = vec![std::fs::read(policy.join("tokenizer.json")).unwrap()];
    if let Ok(m) = std::fs::read(r2m::paths::minilm_dir().join("tokenizer.json")) {
        seeds.push(m);
    }
    campaign(Target::TokenizerJson, seeds, &work);

    // Chat templates beside a valid tokenizer.json: ChatML (SmolLM2, Qwen), Llama 3's and Gemma's
    // shapes, one with macros, loops and filters.
    let work = d.path().join("chat");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::copy(policy.join("tokenizer.json"), work.join("tokenizer.json")).unwrap();
    let templates = [
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
        "{{- bos_token }}{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}",
        "{%- if messages[0]['role'] == 'system' -%}{%- set first = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first = '' -%}{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}{{ raise_exception('roles must alternate') }}{%- endif -%}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' + (first if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{%- endfor -%}",
        "{% macro render(m, depth) %}{% if depth < 3 %}[{{ m.role|upper }}:{{ m.content|replace('a', 'b')|length }}]{{ render(m, depth + 1) }}{% endif %}{% endmacro %}{% for m in messages|reverse %}{{ render(m, 0) }}{{ m|tojson }}{% endfor %}{{ range(3)|list|join(',') }}",
    ];
    campaign(Target::ChatTemplate, templates.iter().map(|t| t.as_bytes().to_vec()).collect(), &work);
}

#[test]
fn preference_jsonl_and_rl_configs_never_panic_or_hang() {
    let d = tmpdir();
    let work = d.path().join("jsonl");
    std::fs::create_dir_all(&work).unwrap();
    let jsonl = [
        r#"{"prompt": "Q: 1+1?", "chosen": " 2", "rejected": " 3"}"#,
        r#"{"chosen": "A: 4", "rejected": "A: 5", "score_chosen": 1.5}"#,
        r#"{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sky?"}], "chosen": [{"role": "assistant", "content": "Blue."}], "rejected": [{"role": "assistant", "content": "Red."}]}"#,
    ]
    .join("\n");
    campaign(Target::Jsonl, vec![jsonl.into_bytes()], &work);

    let work = d.path().join("toml");
    std::fs::create_dir_all(&work).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds: Vec<Vec<u8>> = ["configs/rl.toml", "archive/llm-rm/runs/vanilla-grpo-s0/config.toml"]
        .iter()
        .filter_map(|p| std::fs::read(root.join(p)).ok())
        .collect();
    campaign(Target::Toml, seeds, &work);
}

/// A minimal valid tokenizer.json (word level), the companion of a chat template.
const WORD_LEVEL: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
"pre_tokenizer":{"type":"WhitespaceSplit"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"<unk>":0,"a":1},"unk_token":"<unk>"}}"#;

/// Inputs that once made a reader panic (found by these campaigns), kept in
/// tests/fuzz-regressions/<target>/: each must now end in an error.
#[test]
fn inputs_that_once_crashed_a_reader_end_in_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut seen = 0;
    for (sub, target) in [
        ("gguf", Target::Gguf),
        ("safetensors", Target::Safetensors),
        ("jsonl", Target::Jsonl),
        ("parquet", Target::Parquet),
        ("toml", Target::Toml),
    ] {
        let Ok(files) = std::fs::read_dir(root.join(sub)) else { continue };
        for f in files {
            let path = f.unwrap().path();
            let work = tmpdir();
            if target == Target::ChatTemplate {
                std::fs::write(work.path().join("tokenizer.json"), WORD_LEVEL).unwrap();
            }
            let input = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(|| target.run(&input, work.path()));
            assert!(matches!(r, Ok(Err(_))), "{}: {:?}", path.display(), r.map(|x| x.map_err(|e| e.to_string())));
            seen += 1;
        }
    }
    assert!(seen > 0, "no regression inputs under {}", root.display());
}
