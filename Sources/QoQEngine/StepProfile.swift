// Where a step's wall time goes (issue #18 item 4): `qoq bench --engine --profile` turns this on for the batch-1
// decode run and prints the split. Off by default; when off each mark is one predictable branch. The phases are
// sequential on the calling thread, so their sum is the step's time; the thread pool's wait for its workers is part of
// the GEMM and attention phases and is reported beside them (`ThreadPool.waitNanos`).
import QoQKernels

public final class StepProfile: @unchecked Sendable {
  public enum Phase: Int, CaseIterable, Sendable {
    case schedule, embed, normQuant, qkv, ropeKV, attention, oProj, gateUp, siluQuant, down, residual, lmHead, sample, detokenize

    public var name: String {
      switch self {
      case .schedule: return "schedule"
      case .embed: return "embedding rows"
      case .normQuant: return "RMSNorm + int8 quantization"
      case .qkv: return "q/k/v GEMM"
      case .ropeKV: return "RoPE + KV page stores"
      case .attention: return "paged attention"
      case .oProj: return "o_proj GEMM"
      case .gateUp: return "gate/up GEMM"
      case .siluQuant: return "SiLU·mul + int8 quantization"
      case .down: return "down_proj GEMM"
      case .residual: return "residual adds"
      case .lmHead: return "final norm + LM head"
      case .sample: return "sampling"
      case .detokenize: return "detokenize + stop strings"
      }
    }
  }

  public var enabled = false
  public private(set) var nanos = [UInt64](repeating: 0, count: Phase.allCases.count)
  public private(set) var steps = 0

  public init() {}

  public func reset() {
    nanos = [UInt64](repeating: 0, count: Phase.allCases.count)
    steps = 0
  }

  /// The time now when enabled (0 otherwise): the start of the next phase.
  @inline(__always) func start() -> UInt64 { enabled ? monotonicNanos() : 0 }

  /// Adds the time since `t` to phase `p` and moves `t` to now.
  @inline(__always) func mark(_ p: Phase, _ t: inout UInt64) {
    guard enabled else { return }
    let now = monotonicNanos()
    nanos[p.rawValue] &+= now &- t
    t = now
  }

  func countStep() { if enabled { steps += 1 } }
}
