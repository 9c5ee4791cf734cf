import Foundation
import Testing
@testable import QoQIO
@testable import QoQQuant
@testable import QoQFormat

/// Checks against Tests/Fixtures/quant (scripts/fixtures/make_quant_fixtures.py: an independent numpy
/// implementation, itself cross-checked against deepcompressor's source).
struct QuantFixture {
  let json: JSONValue
  let bin: Data
  init() throws {
    json = try JSON.parseFile(fixturesRoot + "/quant/gptq.json")
    bin = try Data(contentsOf: URL(fileURLWithPath: fixturesRoot + "/quant/gptq.bin"))
  }
  func f32(_ name: String) -> [Float] {
    let t = json["tensors"]![name]!, off = t["offset"]!.int!, n = t["shape"]!.array!.reduce(1) { $0 * $1.int! }
    return bin.withUnsafeBytes { r in (0..<n).map { r.loadUnaligned(fromByteOffset: off + 4 * $0, as: Float.self) } }
  }
  func u8(_ name: String) -> [UInt8] {
    let t = json["tensors"]![name]!, off = t["offset"]!.int!, n = t["shape"]!.array!.reduce(1) { $0 * $1.int! }
    return Array(bin[off..<(off + n)])
  }
}

func floats2D(_ v: JSONValue?) -> [Float] { (v?.array ?? []).flatMap { $0.array?.map { Float($0.double!) } ?? [Float($0.double!)] } }

@Suite struct ReferenceFixtureTests {
  @Test func rtnCasesMatch() throws {
    let r = try JSON.parseFile(fixturesRoot + "/quant/rtn_cases.json")
    #expect(r["protective_range"]!["PostScale"]!.int! == protectiveRange(postScale: true))
    for c in r["uint4_asym_fp16"]!.array! {
      let input = c["input"]!.array!, rows = input.count, cols = input[0].array!.count
      let w = floats2D(c["input"]), g = c["group_size"]!.int!
      let qz = WeightQuantizer(weight: w, out: rows, inp: cols, format: .asym(bits: 4, group: g == cols ? nil : g))
      #expect(qz.scale == floats2D(c["scale"]), "\(c["name"]!.string!) scale")
      #expect(qz.zero == floats2D(c["zero"]), "\(c["name"]!.string!) zero")
      let q = qz.rtn(w)
      #expect(q.codes.map(Float.init) == floats2D(c["codes"]), "\(c["name"]!.string!) codes")
      #expect(q.dequantized() == floats2D(c["dequant"]), "\(c["name"]!.string!) dequant")
    }
    for c in r["progressive"]!.array! {
      let input = c["input"]!.array!, rows = input.count, cols = input[0].array!.count
      let w = floats2D(c["input"]), g = c["group_size"]!.int!
      let qz = WeightQuantizer(weight: w, out: rows, inp: cols, format: .progressive(group: g, protective: c["protective_range"]!.int!))
      #expect(qz.rowScale == floats2D(c["s1"]))
      #expect(qz.scale == floats2D(c["s2"]))
      #expect(qz.zero == floats2D(c["zero"]))
      let q = qz.rtn(w)
      #expect(q.codes.map(Float.init) == floats2D(c["codes"]))
      let deq = q.dequantized(), ref = floats2D(c["dequant"])
      for i in 0..<ref.count { #expect(abs(deq[i] - ref[i]) <= 1e-6 * max(1, abs(ref[i]))) }
    }
    for c in r["int8_sym_per_token"]!.array! {
      let input = c["input"]!.array!, rows = input.count, cols = input[0].array!.count
      var x = floats2D(c["input"])
      fakeQuantizePerToken(&x, rows: rows, width: cols)
      #expect(x == floats2D(c["dequant"]))
    }
    for c in r["kv_uint4_asym"]!.array! {
      let input = c["input"]!.array!, rows = input.count, cols = input[0].array!.count
      var x = floats2D(c["input"])
      fakeQuantizeAsymGroups(&x, rows: rows, width: cols, group: c["group_size"]!.int!, bits: 4)
      #expect(x == floats2D(c["dequant"]), "\(c["name"]!.string!)")
    }
  }

  /// GPTQ gives the reference's integer codes exactly, for every format and block size.
  @Test func gptqCodesMatch() throws {
    let fx = try QuantFixture()
    let w = fx.f32("W"), x = fx.f32("X")
    let p = fx.json["problem"]!
    let rows = p["rows"]!.int!, cols = p["cols"]!.int!, seqs = p["num_sequences"]!.int!
    let acc = HessianAccumulator(size: cols)
    x.withUnsafeBufferPointer { acc.add($0.baseAddress!, rows: x.count / cols) }
    let h = acc.hessian(sequences: seqs)
    let hRef = fx.f32("H")
    // fp32 sums in a different order (the reference scales chunks by √(2/N) first): compare against max |H|.
    var worst = 0.0, top = 0.0
    for i in 0..<h.count { worst = max(worst, abs(h[i] - Double(hRef[i]))); top = max(top, abs(Double(hRef[i]))) }
    #expect(worst / top < 1e-6, "Hessian difference \(worst) of max \(top)")
    #expect(fx.json["act_order_perm"]!.array!.map { $0.int! } == (0..<cols).sorted { a, b in
      let da = Double(hRef[a * cols + a]), db = Double(hRef[b * cols + b]); return da != db ? da > db : a < b })
    for run in fx.json["runs"]!.array! {
      let name = run["format"]!.string!
      let format: WeightFormat = name == "gchn" ? .asym(bits: 4, group: nil) : name == "g16" ? .asym(bits: 4, group: 16) : .progressive(group: 16, protective: 120)
      let qz = WeightQuantizer(weight: w, out: rows, inp: cols, format: format)
      #expect(qz.scale == floats2D(run[name == "prog_g16" ? "scale" : "scale"]), "\(name) scales")
      #expect(qz.zero == floats2D(run["zero"]), "\(name) zeros")
      #expect(qz.rtn(w).codes == fx.u8(run["rtn_codes"]!.string!), "\(name) RTN codes")
      for br in run["runs"]!.array! {
        var o = GPTQOptions(); o.blockSize = br["block_size"]!.int!
        let g = try gptq(weight: w, hessian: hRef.map(Double.init), quantizer: qz, options: o)
        let want = fx.u8(br["codes"]!.string!)
        let diff = zip(g.weight.codes, want).filter { $0 != $1 }.count
        #expect(diff == 0, "\(name) block \(o.blockSize): \(diff) codes differ")
      }
    }
    // The damping retry case: a Hessian that needs 7 tries.
    let rc = fx.json["retry_case"]!
    let rw = fx.f32(rc["W"]!.string!), rh = fx.f32(rc["H"]!.string!)
    let rr = rc["rows"]!.int!, rcc = rc["cols"]!.int!
    let rq = WeightQuantizer(weight: rw, out: rr, inp: rcc, format: .asym(bits: 4, group: nil))
    let g = try gptq(weight: rw, hessian: rh.map(Double.init), quantizer: rq)
    #expect(g.weight.codes == fx.u8(rc["codes"]!.string!))
  }
}
