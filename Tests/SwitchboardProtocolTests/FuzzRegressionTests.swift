import Foundation
import NIOCore
import SwitchboardProtocol
import Testing

/// Every input in Tests/Fuzz/regressions (fuzzer seeds and anything a fuzz run ever
/// crashed on) decodes to a frame or to a documented error, without crashing.
@Suite("Fuzz regressions")
struct FuzzRegressionTests {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz/regressions")

    @Test("saved fuzz inputs decode or fail cleanly, and every error frame is valid JSON")
    func replay() throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: Self.folder.path).sorted()
        #expect(names.count >= 8)
        for name in names {
            let bytes = Array(try Data(contentsOf: Self.folder.appendingPathComponent(name)))
            switch ClientFrame.decode(ByteBuffer(bytes: bytes)) {
            case .success:
                break
            case .failure(let error):
                let encoded = ServerFrame.error(error)
                #expect((try? JSONScanner.topLevelMembers(of: Array(encoded.readableBytesView))) != nil, "\(name)")
            }
        }
    }
}
