import Synchronization

/// Where a stream is: its epoch and an offset in it.
///
/// Offsets start at 1 and grow by one per message of the stream. The epoch names one
/// life of the stream: when a store loses a stream (Redis flushed, a memory store
/// restarted) it starts a new epoch, and a position in an older epoch is meaningless.
public struct StreamPosition: Sendable, Hashable, CustomStringConvertible {
    /// At most this many bytes of `[A-Za-z0-9_-]`: the alphabet stores use and the wire accepts.
    public static let maximumEpochLength = 64

    public var epoch: String
    public var offset: UInt64

    public init(epoch: String, offset: UInt64) {
        self.epoch = epoch
        self.offset = offset
    }

    public var description: String { "\(epoch):\(offset)" }

    /// Whether `epoch` is a string a store could have made (and so safe to write into JSON unescaped).
    public static func isValidEpoch(_ epoch: some StringProtocol) -> Bool {
        !epoch.isEmpty && epoch.utf8.count <= maximumEpochLength
            && epoch.utf8.allSatisfy { byte in
                switch byte {
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                    UInt8(ascii: "-"), UInt8(ascii: "_"):
                    true
                default: false
                }
            }
    }

    /// A new epoch, unique across processes and calls: 16 random hex digits drawn once per
    /// process, then a counter. Stores offer one with every append (used only when the
    /// stream has to be created), so this runs per message and must be cheap.
    public static func randomEpoch() -> String {
        let count = EpochSource.counter.wrappingAdd(1, ordering: .relaxed).newValue
        return EpochSource.prefix + String(count, radix: 36)
    }
}

/// Where new epochs come from (``StreamPosition/randomEpoch()``).
private enum EpochSource {
    static let prefix: String = {
        let digits = String(UInt64.random(in: 1...UInt64.max), radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }()
    static let counter = Atomic<UInt64>(0)
}
