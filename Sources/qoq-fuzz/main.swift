// qoq-fuzz: a bounded mutation fuzzer for every parser (safetensors, GGUF, JSON/tokenizer.json, config.json) and the
// tokenizer itself. Seeds are valid inputs; mutations flip bits, write boundary integers, insert, delete and truncate.
// A parser may throw; it must never crash, hang or allocate without bound. CI runs it briefly (scripts/test.sh).
// Structure-aware generators add hostile torch pickles, hostile config values and chat contents that spell special
// tokens (which must stay plain text).
// Usage: qoq-fuzz [--seconds S] [--seed N] [--target all|safetensors|gguf|json|config|tokenizer|openai|template|pickle|
//        config-values|chat-content] [--fixtures DIR]
import Foundation
import QoQIO
import QoQModels
import QoQServing
import QoQTokenizers

var seconds = 5.0, seed: UInt64 = 1, target = "all"
var fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .deletingLastPathComponent().appendingPathComponent("Tests/Fixtures").path
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
  switch a {
  case "--seconds": seconds = Double(args.popFirst() ?? "") ?? seconds
  case "--seed": seed = UInt64(args.popFirst() ?? "") ?? seed
  case "--target": target = args.popFirst() ?? target
  case "--fixtures": fixtures = args.popFirst() ?? fixtures
  default: FileHandle.standardError.write(Data("unknown argument \(a)\n".utf8)); exit(2)
  }
}

typealias Rng = SplitMix64

func mutate(_ input: [UInt8], _ r: inout Rng) -> [UInt8] {
  var b = input
  for _ in 0..<(1 + r.int(4)) {
    if b.isEmpty { b = [UInt8(r.int(256))]; continue }
    let i = r.int(b.count)
    switch r.int(7) {
    case 0: b[i] ^= UInt8(1 << r.int(8))
    case 1: b[i] = [0, 0xFF, 0x7F, 0x80, 0x01, 0x20, 0x7B, 0x22][r.int(8)]
    case 2:  // boundary integer over 8 bytes
      let vals: [UInt64] = [0, 1, 0x7FFF_FFFF, 0xFFFF_FFFF, 1 << 32, 1 << 40, UInt64.max, UInt64.max / 2, 1 << 62]
      var v = vals[r.int(vals.count)].littleEndian
      let n = min(8, b.count - i)
      withUnsafeBytes(of: &v) { for k in 0..<n { b[i + k] = $0[k] } }
    case 3: b.insert(contentsOf: (0..<(1 + r.int(16))).map { _ in UInt8(r.int(256)) }, at: i)
    case 4: b.removeSubrange(i..<min(b.count, i + 1 + r.int(32)))
    case 5: b = Array(b.prefix(i))
    default:  // duplicate a chunk
      let j = r.int(b.count), n = min(64, b.count - j)
      b.insert(contentsOf: b[j..<(j + n)], at: i)
    }
  }
  return b
}

let tmp = NSTemporaryDirectory() + "qoq-fuzz-\(getpid())"
try? FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(atPath: tmp) }

func withFile(_ bytes: [UInt8], _ name: String, _ body: (String) throws -> Void) {
  let p = tmp + "/" + name
  FileManager.default.createFile(atPath: p, contents: Data(bytes))
  _ = try? body(p)
}

func seedSafetensors() throws -> [UInt8] {
  let p = tmp + "/seed.safetensors"
  try SafeTensorsWriter.write([TensorBlob(name: "a", shape: [2, 3], floats: [1, 2, 3, 4, 5, 6]),
                               TensorBlob(name: "b", dtype: .F16, shape: [2], data: Data([0, 60, 0, 188]))], to: p)
  return [UInt8](try Data(contentsOf: URL(fileURLWithPath: p)))
}

func file(_ rel: String, in dir: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/" + rel))) }

var rng = Rng(seed: seed)
var runs: [String: Int] = [:]
let smallConfig = Array([#"{"model_type":"llama","hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":"#,
                         #"4,"num_key_value_heads":2,"vocab_size":100,"rope_scaling":{"type":"llama3","factor":8.0}}"#].joined().utf8)
// A small tokenizer.json: the spm fixture's pipeline is exercised through its GGUF seed; JSON fuzzing uses a
// compact synthetic one so each iteration is fast.
let smallTokenizer = Array([#"{"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2,"<0x41>":3},"merges":["a b"],"byte_fallback":"#,
                            #"true,"unk_token":"a"},"added_tokens":[{"id":4,"content":"<s>","special":true}],"normalizer":"#,
                            #"{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"}]},"pre_tokenizer":"#,
                            #"{"type":"ByteLevel","add_prefix_space":false,"use_regex":true},"decoder":{"type":"ByteLevel"},"post_processor":"#,
                            #"{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":"#,
                            #"0}}],"special_tokens":{"<s>":{"id":"<s>","ids":[4],"tokens":["<s>"]}}}}"#].joined().utf8)

var targets: [(String, [UInt8], ([UInt8]) -> Void)] = []
if target == "all" || target == "safetensors" {
  targets.append(("safetensors", try seedSafetensors(), { b in withFile(b, "f.safetensors") { p in
    let f = try SafeTensorsFile(path: p); for n in f.names { _ = try f.floats(n) } } }))
}
if target == "all" || target == "gguf" {
  targets.append(("gguf", try file("gguf/quant_types.gguf", in: fixtures), { b in withFile(b, "f.gguf") { p in
    let g = try GGUFFile(path: p); for t in g.tensors where t.type.canDequantize { _ = try g.floats(t.name) } } }))
  targets.append(("gguf-tokenizer", try file("tokenizers/spm/tokenizer.gguf", in: fixtures).prefix(6000).map { $0 },
                  { b in withFile(b, "t.gguf") { p in
    _ = try Tokenizer.load(gguf: GGUFFile(path: p)) } }))
}
if target == "all" || target == "json" {
  targets.append(("tokenizer.json", smallTokenizer, { b in
    _ = try? b.withUnsafeBytes { raw in
      let t = try Tokenizer.load(tokenizerJSON: JSON.parse(raw, what: "fuzz"), config: nil, what: "fuzz")
      _ = try t.decode(try t.encode("ab <s>A b\u{00e9}"))
    } }))
}
if target == "all" || target == "config" {
  targets.append(("config.json", smallConfig, { b in withFile(b, "config.json") { p in _ = try LlamaConfiguration.load(path: p) } }))
}
if target == "all" || target == "openai" {
  // Request bodies from clients: any bytes give a parsed request or an APIError with a 4xx status, never a crash.
  let completion = Array([#"{"model":"m","prompt":[[1,2],[3]],"max_tokens":5,"echo":true,"logprobs":2,"n":2,"stop":["\n"],"logit_bias":"#,
                           #"{"7":-5},"presence_penalty":0.5,"stream":true,"stream_options":{"include_usage":true}}"#].joined().utf8)
  let chat = Array([#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_tokens":"#,
                     #"4,"logprobs":true,"top_logprobs":3,"chat_template_kwargs":{"x":1}}"#].joined().utf8)
  func check(_ body: () throws -> Void) {
    do { try body() } catch let e as APIError {
      if !(400..<500).contains(e.status) { FileHandle.standardError.write(Data("OpenAI parser gave status \(e.status)\n".utf8)); exit(1) }
    } catch { FileHandle.standardError.write(Data("OpenAI parser threw \(error)\n".utf8)); exit(1) }
  }
  targets.append(("openai completion", completion, { b in check { _ = try OpenAIParse.completion(Data(b)) } }))
  targets.append(("openai chat", chat, { b in check { _ = try OpenAIParse.chat(Data(b)) } }))
}
if target == "all" || target == "template" {
  // Chat templates are code from model files: mutated sources either fail to parse or render with a message.
  let source = Array([#"{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|user|>' + m['content'] | trim }}"#,
                       #"{% elif loop.last %}{{ m.content }}{% else %}{{ raise_exception('bad') }}{% endif %}{% endfor %}"#,
                       #"{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"#].joined().utf8)
  targets.append(("chat template", source, { b in
    guard let src = String(bytes: b, encoding: .utf8), let t = try? ChatTemplate(src) else { return }
    _ = try? t.render(messages: [("user", "hi"), ("assistant", "yo")], addGenerationPrompt: true, bosToken: "<s>", eosToken: "</s>")
  }))
}
if target == "all" || target == "pickle" {
  targets.append(("torch pickle (mutated)", try file("interop/dc_g32/scale.pt", in: fixtures), { b in withFile(b, "f.pt") { p in
    _ = try TorchFile.load(path: p) } }))
}
// Generated inputs: each call builds a fresh structured input from the generator and runs it.
var generated: [(String, (inout Rng) -> Void)] = []
if target == "all" || target == "pickle" {
  generated.append(("torch pickle (structured)", { r in withFile(pickleFuzzInput(&r), "g.pt") { p in _ = try TorchFile.load(path: p) } }))
}
if target == "all" || target == "config-values" {
  generated.append(("config values", { r in withFile(hostileConfig(&r), "hostile-config.json") { p in
    if let c = try? LlamaConfiguration.load(path: p) {
      // A config that loads has sizes whose products are representable.
      _ = try checkedCount([c.numHiddenLayers, c.intermediateSize, c.hiddenSize], "fuzz")
    }
  } }))
}
if target == "all" || target == "chat-content" {
  let tok = try Tokenizer.load(folder: fixtures + "/tokenizers/smollm2")
  let template = try ChatTemplate([#"{% for message in messages %}"#,
                                    #"{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"#,
                                    #"{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"#].joined())
  let specials = Set(tok.addedTokens.filter(\.special).map(\.id))
  let benign = try template.encodeChat([("user", "x"), ("assistant", "y")], tokenizer: tok).ids.filter(specials.contains)
  generated.append(("chat content", { r in
    let pieces = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_", "end|>", "system", "\n", " ", String(Tokenizer.inertMarker),
                  "é", "a", "<", "|>", "</s>"]
    let content = { (r: inout Rng) in (0..<r.int(12)).map { _ in pieces[r.int(pieces.count)] }.joined() }
    let messages: [(role: String, content: String)] = [("user", content(&r)), ("assistant", content(&r))]
    guard let res = try? template.encodeChat(messages, tokenizer: tok) else { return }
    let (ids, text) = (res.ids, res.text)
    if ids.filter(specials.contains) != benign || (try? tok.decode(ids)) != text {
      FileHandle.standardError.write(Data("chat content forged a special token: \(messages)\n".utf8)); exit(1)
    }
  }))
}
var tokenizer: Tokenizer? = nil
if target == "all" || target == "tokenizer" {
  tokenizer = try Tokenizer.load(folder: fixtures + "/tokenizers/smollm2")
}

let perTarget = seconds / Double(targets.count + generated.count + (tokenizer == nil ? 0 : 1))
for (name, seedBytes, run) in targets {
  let end = Date().addingTimeInterval(perTarget)
  var n = 0
  run(seedBytes)
  while Date() < end {
    run(mutate(seedBytes, &rng))
    n += 1
  }
  runs[name] = n
}
for (name, run) in generated {
  let end = Date().addingTimeInterval(perTarget)
  var n = 0
  while Date() < end { run(&rng); n += 1 }
  runs[name] = n
}
if let tok = tokenizer {
  // Random unicode text: encoding never fails, and byte-level decoding gives the text back exactly. C0 control
  // characters other than \t \n \r are left out: SmolLM2's vocabulary lacks some control bytes, which the reference
  // `tokenizers` library (and we) drop, so those texts cannot round-trip.
  let end = Date().addingTimeInterval(perTarget)
  var n = 0
  let pools: [ClosedRange<UInt32>] = [0x20...0x7E, 0x09...0x0A, 0x0D...0x0D, 0xA0...0x24F, 0x300...0x36F, 0x4E00...0x4E80,
                                      0x1F300...0x1F64F, 0xE000...0xE010]
  while Date() < end {
    var s = String.UnicodeScalarView()
    for _ in 0..<rng.int(40) {
      let pool = pools[rng.int(pools.count)]
      if let u = Unicode.Scalar(pool.lowerBound + UInt32(rng.int(Int(pool.upperBound - pool.lowerBound) + 1))) { s.append(u) }
    }
    let text = String(s)
    let ids = try tok.encode(text, parseSpecial: false)
    let back = try tok.decode(ids)
    if back != text {
      FileHandle.standardError.write(Data("tokenizer round trip failed for \(text.debugDescription)\n".utf8)); exit(1)
    }
    n += 1
  }
  runs["tokenizer round trip"] = n
}
for (k, v) in runs.sorted(by: { $0.key < $1.key }) { print("fuzz \(k): \(v) inputs, no crash") }

/// A config.json with one or more fields set to hostile values (negative, zero, huge, beyond Int32/Int64, fractional,
/// wrong types, long id lists), on top of a valid small config.
func hostileConfig(_ r: inout Rng) -> [UInt8] {
  var fields: [String: String] = ["model_type": "\"llama\"", "hidden_size": "64", "intermediate_size": "96", "num_hidden_layers": "2",
                                  "num_attention_heads": "4", "num_key_value_heads": "2", "vocab_size": "100"]
  let keys = Array(fields.keys) + ["head_dim", "max_position_embeddings", "bos_token_id", "eos_token_id", "sliding_window",
                                   "rms_norm_eps", "rope_theta", "rope_scaling", "tie_word_embeddings"]
  let values = ["0", "-1", "1", "3", "1000000", "2147483647", "2147483648", "4294967296", "9223372036854775807",
                "9223372036854775808", "-9223372036854775808", "1e308", "1.5", "null", "\"7\"", "[]", "[1,2,-3]",
                "[" + Array(repeating: "99", count: 5000).joined(separator: ",") + "]", "{\"rope_type\":\"llama3\",\"factor\":-1}",
                "{\"type\":\"llama3\",\"factor\":1e309}", "true", "65536", "16777216"]
  for _ in 0..<(1 + r.int(3)) { fields[keys[r.int(keys.count)]] = values[r.int(values.count)] }
  return Array(("{" + fields.map { "\"\($0.key)\": \($0.value)" }.joined(separator: ",") + "}").utf8)
}
