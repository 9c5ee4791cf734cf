import XCTest
import QoQIO
@testable import QoQScheduler

final class BlockManagerTests: XCTestCase {
  /// Pages come out in order 0, 1, 2, ..., each exactly once, until the pool is empty; then nil.
  func testAllocateUntilEmpty() {
    let m = BlockManager(numBlocks: 5)
    XCTAssertEqual(m.numBlocks, 5)
    XCTAssertEqual(m.numFree, 5)
    var got: [Int32] = []
    while let b = m.allocate() { got.append(b) }
    XCTAssertEqual(got, [0, 1, 2, 3, 4])
    XCTAssertEqual(m.numFree, 0)
    XCTAssertNil(m.allocate())
    for b in got { XCTAssertEqual(m.refCount(b), 1) }
  }

  /// A released page is free again (refcount 0) and is handed out by the next allocate.
  func testReleaseReturnsThePage() {
    let m = BlockManager(numBlocks: 3)
    let a = m.allocate()!, b = m.allocate()!
    m.release(a)
    XCTAssertEqual(m.refCount(a), 0)
    XCTAssertEqual(m.refCount(b), 1)
    XCTAssertEqual(m.numFree, 2)
    XCTAssertEqual(m.allocate(), a)
  }

  /// A shared page (retain) survives the first release and is freed by the last one; the refcount is what
  /// guards against a double free (release asserts refCount > 0), so the test checks it rather than trapping.
  func testRetainSharesUntilLastRelease() {
    let m = BlockManager(numBlocks: 2)
    let a = m.allocate()!
    m.retain(a)
    m.retain(a)
    XCTAssertEqual(m.refCount(a), 3)
    m.release(a)
    m.release(a)
    XCTAssertEqual(m.refCount(a), 1)
    XCTAssertEqual(m.numFree, 1, "still owned: not back on the free list")
    m.release(a)
    XCTAssertEqual(m.refCount(a), 0, "a further release would be a double free")
    XCTAssertEqual(m.numFree, 2)
    // The page appears once on the free list: two allocations give two distinct pages.
    let x = m.allocate()!, y = m.allocate()!
    XCTAssertNotEqual(x, y)
    XCTAssertNil(m.allocate())
  }

  func testEmptyPool() {
    let m = BlockManager(numBlocks: 0)
    XCTAssertEqual(m.numFree, 0)
    XCTAssertNil(m.allocate())
  }
}
