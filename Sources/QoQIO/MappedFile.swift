// Read-only memory-mapped files. Checkpoints are mapped, never read whole, so a 16 GB shard costs no RAM up front.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A file mapped read-only into memory. The mapping lives as long as this object.
public final class MappedFile: @unchecked Sendable {
  public let path: String
  public let count: Int
  public let base: UnsafeRawPointer?
  private let mappedLength: Int

  public init(path: String) throws {
    self.path = path
    let fd = open(path, O_RDONLY)
    if fd < 0 { throw QoQError("\(path): cannot open (\(String(cString: strerror(errno))))") }
    defer { close(fd) }
    var st = stat()
    if fstat(fd, &st) != 0 { throw QoQError("\(path): cannot stat") }
    if (st.st_mode & S_IFMT) != S_IFREG { throw QoQError("\(path): not a regular file") }
    count = Int(st.st_size)
    if count == 0 {
      base = nil; mappedLength = 0; return
    }
    let p = mmap(nil, count, PROT_READ, MAP_PRIVATE, fd, 0)
    if p == MAP_FAILED || p == nil { throw QoQError("\(path): mmap failed") }
    base = UnsafeRawPointer(p!)
    mappedLength = count
  }

  /// The whole file as a buffer (empty for an empty file).
  public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

  /// Drops the pages of bytes [begin, end) from this process's resident set (madvise DONTNEED). The mapping is a
  /// read-only private file mapping, so the bytes stay valid: a later access faults them in from the page cache.
  /// Readers that copy a tensor out call this so touched checkpoint pages do not pile up in RSS (a streamed 16 GB
  /// checkpoint would otherwise stay resident as it is read).
  public func release(_ begin: Int, _ end: Int) {
    guard let b = base, begin < end, begin >= 0, end <= count else { return }
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let lo = begin / page * page, hi = min(mappedLength, (end + page - 1) / page * page)
    _ = madvise(UnsafeMutableRawPointer(mutating: b + lo), hi - lo, MADV_DONTNEED)
  }

  deinit {
    if let b = base { munmap(UnsafeMutableRawPointer(mutating: b), mappedLength) }
  }
}

/// Writes `data` to `path` atomically: a temporary file in the same folder, fsync, then rename.
/// A crash midway leaves either the old file or nothing, never a partial file.
public func atomicWrite(_ path: String, _ write: (FileHandle) throws -> Void) throws {
  let url = URL(fileURLWithPath: path)
  let dir = url.deletingLastPathComponent().path
  let tmp = dir + "/." + url.lastPathComponent + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
  guard FileManager.default.createFile(atPath: tmp, contents: nil) else {
    throw QoQError("\(path): cannot create temporary file in \(dir)")
  }
  do {
    let h = try FileHandle(forWritingTo: URL(fileURLWithPath: tmp))
    do {
      try write(h)
      try h.synchronize()
      try h.close()
    } catch {
      try? h.close()
      throw error
    }
    if rename(tmp, path) != 0 { throw QoQError("\(path): rename failed (\(String(cString: strerror(errno))))") }
  } catch {
    unlink(tmp)
    throw error
  }
}

public func atomicWrite(_ path: String, data: Data) throws {
  try atomicWrite(path) { h in try h.write(contentsOf: data) }
}
