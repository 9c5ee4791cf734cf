import Foundation
import Testing
@testable import QoQIO
@testable import QoQQuant
@testable import QoQFormat
import QoQModels

let recipesDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .deletingLastPathComponent().appendingPathComponent("recipes").path

func writeTemp(_ text: String, _ name: String) -> String {
  let dir = NSTemporaryDirectory() + "qoq-recipes-\(getpid())"
  try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  let p = dir + "/" + name
  FileManager.default.createFile(atPath: p, contents: Data(text.utf8))
  return p
}

@Suite struct RecipeTests {
  @Test func shippedDefaultEqualsEmbedded() throws {
    let file = try Recipe.parseYAML(try String(contentsOfFile: recipesDir + "/__default__.yaml", encoding: .utf8), what: "file")
    #expect(file == (try Recipe()).tree)
  }

  @Test func shippedRecipesResolve() throws {
    let g64 = try QuantPlan(try Recipe.load(files: [recipesDir + "/qoq-g64.yaml"], flags: []))
    #expect(g64.weightFormat == .progressive(group: 64, protective: 120))
    #expect(g64.actBits == 8 && g64.kvBits == 4 && g64.kvGroup == 64 && g64.kvAsymmetric)
    #expect(g64.rotation?.transforms == ["out_proj"] && g64.reorder && g64.gptq != nil)
    #expect(g64.smoothProj?.alpha == 0.3 && g64.smoothProj?.beta == 0.7)
    #expect(g64.smoothAttn?.alpha == 0.5 && g64.smoothAttn?.beta == 0)
    let g128 = try QuantPlan(try Recipe.load(files: [recipesDir + "/qoq-g128.yaml"], flags: []))
    #expect(g128.weightFormat == .progressive(group: 128, protective: 120) && g128.kvGroup == 128)
    let rtn = try QuantPlan(try Recipe.load(files: [recipesDir + "/rtn-w4a8kv4-g64.yaml"], flags: []))
    #expect(rtn.weightFormat == .asym(bits: 4, group: 64) && rtn.gptq == nil && rtn.rotation == nil && !rtn.needsCalibration)
    let grid = try QuantPlan(try Recipe.load(files: [recipesDir + "/qoq-gchn.yaml"], flags: []))
    #expect(grid.clipStrategy == .gridSearch && grid.clipNumGrids == 80 && grid.smoothAttn?.strategy == .gridSearch)
    #expect(grid.smoothAttn?.beta == -2 && grid.smoothAttn?.grids == 20)
    let gchn = try QuantPlan(try Recipe.load(files: [recipesDir + "/qoq-gchn.yaml"], flags: [
      "--wgts-calib-range-strategy", "Manual", "--smooth-attn-strategy", "Manual", "--smooth-attn-beta", "0"]))
    #expect(gchn.weightFormat == .asym(bits: 4, group: nil) && gchn.smoothProj?.alpha == 0.1)
    // Key rotation (issue #19): auto follows centering — on for a Qwen2 model with K biases, off for Llama and for
    // recipes without KV quantization; never/always force it; other words are refused.
    let qwen = try LlamaConfiguration(modelType: "qwen2", hiddenSize: 64, intermediateSize: 96, numHiddenLayers: 1,
                                      numAttentionHeads: 4, numKeyValueHeads: 2, headDim: 32, rmsNormEps: 1e-6, vocabSize: 90)
    let llama = try LlamaConfiguration(modelType: "llama", hiddenSize: 64, intermediateSize: 96, numHiddenLayers: 1,
                                       numAttentionHeads: 4, numKeyValueHeads: 2, headDim: 32, rmsNormEps: 1e-6, vocabSize: 90)
    let odd = try LlamaConfiguration(modelType: "qwen2", hiddenSize: 96, intermediateSize: 96, numHiddenLayers: 1,
                                     numAttentionHeads: 2, numKeyValueHeads: 2, headDim: 48, rmsNormEps: 1e-6, vocabSize: 90)
    #expect(g128.rotatesKeys(qwen) && !g128.rotatesKeys(llama) && !g128.rotatesKeys(odd))
    #expect(!rtn.rotatesKeys(qwen))
    let never = try QuantPlan(try Recipe.load(files: [recipesDir + "/qoq-g128.yaml"], flags: ["--opts-rotate-keys", "never"]))
    #expect(!never.rotatesKeys(qwen) && never.centersKeys(qwen))
    let always = try QuantPlan(try Recipe.load(files: [recipesDir + "/rtn-w4a8kv4-g64.yaml"], flags: ["--opts-rotate-keys", "always"]))
    #expect(always.rotatesKeys(llama))
    #expect(throws: QoQError("recipe: quant.opts.rotate_keys must be auto, always or never (got sideways)")) {
      try QuantPlan(try Recipe.load(files: [recipesDir + "/qoq-g128.yaml"], flags: ["--opts-rotate-keys", "sideways"]))
    }
  }

  @Test func flagsFollowOmniconfigNames() throws {
    let r = try Recipe.load(files: [recipesDir + "/qoq-g64.yaml"], flags: [
      "--smooth-proj-alpha", "0.05", "--smooth-proj-beta", "0.95", "--no-enable-reorder", "--calib-num-samples", "8",
      "--wgts-group-shapes", "1,-1", "1,32", "--smooth-attn-beta", " -2", "--model-path", "/m", "--seed", "7",
      "--wgts-kernel-gptq-damp-percentage", "0.02", "--enable-rotation"])
    #expect(try r.double("quant.smooth.proj.alpha") == 0.05)
    #expect(try r.double("quant.smooth.attn.beta") == -2)
    #expect(try !r.bool("quant.enable_reorder") && r.bool("quant.enable_rotation"))
    #expect(try r.int("quant.calib.num_samples") == 8 && r.int("seed") == 7)
    #expect(try r.groupShapes("quant.wgts.group_shapes") == [[1, -1], [1, 32]])
    #expect(try r.string("model.path") == "/m")
    #expect(try r.double("quant.wgts.kernel_gptq.damp_percentage") == 0.02)
    let off = try QuantPlan(try Recipe.load(files: [recipesDir + "/qoq-g64.yaml"], flags: ["--wgts-dtype", "null", "--opts-dtype", "none"]))
    #expect(off.weightFormat == nil && off.kvBits == nil && off.actBits == 8)
    #expect(try QuantPlan(try Recipe.load(files: [], flags: ["--model-dtype", "torch.bfloat16"])).calibBF16)
    let fp16 = try QuantPlan(try Recipe.load(files: [], flags: ["--model-dtype", "torch.float16"]))
    #expect(fp16.calibFP16 && !fp16.calibBF16)
    // The resolved recipe round-trips through YAML.
    #expect(try Recipe.parseYAML(r.yaml(), what: "resolved") == r.tree)
  }

  /// Bad recipes are refused with a message naming the problem, before any work.
  @Test func badRecipesAreRefused() throws {
    let cases: [([String], [String], String)] = [
      ([writeTemp("quant:\n  wgts:\n    dtypo: uint4\n", "typo.yaml")], [], "unknown recipe field quant.wgts.dtypo"),
      ([writeTemp("quant:\n  wgts: 3\n", "notmap.yaml")], [], "must be a mapping"),
      ([writeTemp("quant: [1, 2\n", "bad.yaml")], [], "invalid YAML"),
      (["/nonexistent/recipe.yaml"], [], "cannot read"),
      ([], ["--wgts-dtipe", "uint4"], "unknown option --wgts-dtipe"),
      ([], ["--calib-num-samples", "many"], "takes a number"),
      ([], ["--calib-num-samples", "0"], "must be positive"),
      ([], ["--wgts-dtype", "uint9"], "not supported"),
      ([], ["--wgts-dtype", "uint4", "--wgts-zero-point", "Midpoint"], "PostScale or PreScale"),
      ([], ["--ipts-dtype", "sint8", "--ipts-static"], "static"),
      ([], ["--opts-dtype", "uint4", "--opts-zero-point", "PostScale", "--opts-group-shapes", "1,64"], "attn_q"),
      ([], ["--enable-rotation", "--rotation-transforms", "down_proj"], "not supported"),
      ([], ["--wgts-dtype", "uint4", "--wgts-zero-point", "PostScale", "--wgts-calib-range-ratio", "1.5"], "ratio"),
      ([], ["--smooth-proj-alpha", "0.1", "0.2"], "takes one value"),
      ([], ["--develop-dtype", "torch.float16"], "develop_dtype"),
      ([], ["--model-dtype", "torch.int8"], "model.dtype"),
    ]
    var failures: [String] = []
    for (files, flags, needle) in cases {
      do {
        _ = try QuantPlan(try Recipe.load(files: files, flags: flags))
        failures.append("\(files) \(flags): accepted")
      } catch let e as QoQError {
        if !e.message.localizedCaseInsensitiveContains(needle) { failures.append("\(flags): \"\(e.message)\" lacks \"\(needle)\"") }
      }
    }
    #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
  }

  @Test func modelNameResolution() throws {
    #expect(try ModelName.family("llama-2-7b") == "llama-2")
    #expect(try ModelName.family("mixtral-8x7b") == "mixtral")
    #expect(try ModelName.family("smollm2-135m") == "smollm2")
    #expect(throws: QoQError.self) { _ = try ModelName.family("llama-1.1b-x") }
    #expect(try ModelName.resolve(path: nil, name: "llama-3-8b", root: "/models") == "/models/llama-3/llama-3-8b")
    #expect(throws: QoQError.self) { _ = try ModelName.resolve(path: nil, name: "llama-3-8b", root: nil) }
  }
}
