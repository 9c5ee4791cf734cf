// Hooks that let the quantizer see inside a decoder layer without the model knowing about quantization.

/// Transforms K (post-RoPE) and V rows in place before they enter the cache, e.g. KV4 fake quantization.
public protocol KVTransform: AnyObject, Sendable {
  /// x: (rows, width) row-major, width = kv_heads · head_dim.
  func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int)
}

/// The tensors of one decoder layer that calibration stages read. Each point appends rows (N, dim).
public final class LayerCapture: @unchecked Sendable {
  public enum Point: Int, CaseIterable, Sendable {
    /// input_layernorm output = q/k/v input (H)
    case attnInput
    /// post-RoPE Q (heads·head_dim) and K (kv_heads·head_dim), v_proj output (kv_heads·head_dim)
    case qRope, kRope, vOutput
    /// o_proj input (heads·head_dim), o_proj output (H)
    case oProjInput, attnOutput
    /// post_attention_layernorm output = gate/up input (H); down_proj input (intermediate)
    case mlpInput, downInput
  }
  public let points: Set<Point>
  public private(set) var data: [Point: [Float]] = [:]

  public init(_ points: Set<Point>) { self.points = points }

  func record(_ p: Point, _ x: UnsafePointer<Float>, _ count: Int) {
    guard points.contains(p) else { return }
    data[p, default: []].append(contentsOf: UnsafeBufferPointer(start: x, count: count))
  }

  /// MoE layers, when `downInput` is captured: per expert, the rows routed to it, as its w1/w3 input (m, H) and its
  /// w2 input (m, intermediate); an expert no token chose has no entry.
  public private(set) var expertInputs: [Int: [Float]] = [:]
  public private(set) var expertDownInputs: [Int: [Float]] = [:]

  func recordExpert(_ e: Int, input: UnsafePointer<Float>, down: UnsafePointer<Float>, rows m: Int, hidden H: Int, intermediate I: Int) {
    guard points.contains(.downInput) else { return }
    expertInputs[e, default: []].append(contentsOf: UnsafeBufferPointer(start: input, count: m * H))
    expertDownInputs[e, default: []].append(contentsOf: UnsafeBufferPointer(start: down, count: m * I))
  }

  public subscript(_ p: Point) -> [Float] { data[p] ?? [] }
  /// Empties the capture for the next chunk, keeping each point's storage (a calibration pass records the same sizes
  /// chunk after chunk, so nothing is allocated or first-touched again); an array an observer still holds is copied
  /// on write as usual. Expert entries are dropped, since an expert no token chose has none.
  public func clear() {
    for p in Array(data.keys) { data[p]!.removeAll(keepingCapacity: true) }
    expertInputs.removeAll(); expertDownInputs.removeAll()
  }
}
