/// A stored (uncompressed) zip archive as torch.save writes it (local headers, central directory, end record):
/// hostile torch files for the tests and the fuzzer are built with it.
public func storedZip(_ entries: [(String, [UInt8])]) -> [UInt8] {
  var z: [UInt8] = [], central: [UInt8] = []
  func u16(_ v: Int, _ b: inout [UInt8]) { b += [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF)] }
  func u32(_ v: Int, _ b: inout [UInt8]) { for i in 0..<4 { b.append(UInt8(v >> (8 * i) & 0xFF)) } }
  for (name, data) in entries {
    let off = z.count, n = Array(name.utf8)
    u32(0x0403_4b50, &z); u16(20, &z); u16(0, &z); u16(0, &z); u32(0, &z); u32(0, &z)
    u32(data.count, &z); u32(data.count, &z); u16(n.count, &z); u16(0, &z); z += n; z += data
    u32(0x0201_4b50, &central); u16(20, &central); u16(20, &central); u16(0, &central); u16(0, &central); u32(0, &central)
    u32(0, &central); u32(data.count, &central); u32(data.count, &central); u16(n.count, &central); u16(0, &central)
    u16(0, &central); u16(0, &central); u16(0, &central); u32(0, &central); u32(off, &central); central += n
  }
  let cd = z.count
  z += central
  u32(0x0605_4b50, &z); u16(0, &z); u16(0, &z); u16(entries.count, &z); u16(entries.count, &z)
  u32(central.count, &z); u32(cd, &z); u16(0, &z)
  return z
}
