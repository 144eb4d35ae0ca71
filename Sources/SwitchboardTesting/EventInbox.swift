import NIOCore
import Synchronization

/// Why a ``TestClient`` read ended without an event.
public enum TestClientError: Error, Equatable, CustomStringConvertible {
    /// The connection ended and every event it received has been read.
    case closed
    /// Nothing arrived within the timeout.
    case timedOut(Duration)

    public var description: String {
        switch self {
        case .closed: "connection closed"
        case .timedOut(let timeout): "nothing arrived within \(timeout)"
        }
    }
}

/// Events in arrival order, awaited by readers with a deadline.
///
/// The producer (the task draining a connection's event stream) calls ``append(_:)`` and,
/// at the end, ``finish()``; a reader's ``next(timeout:)`` returns at once when an event
/// is buffered, and otherwise parks a continuation that the next event, the end, its
/// timeout or its cancellation resumes, whichever comes first. Whoever takes the waiter
/// out of the state under the lock resumes it, so it is resumed exactly once and an event
/// is never handed to a reader that already gave up (a timed-out read loses nothing).
///
/// Threading: any task may call any method; readers are served first come, first served.
/// ``append(_:)`` never blocks, so a backplane's delivery handler may call it.
public final class EventInbox<Event: Sendable>: Sendable {
    private struct Waiter {
        let id: UInt64
        let continuation: CheckedContinuation<Event?, any Error>
        var timer: Task<Void, Never>?
    }

    private struct State {
        var buffer = CircularBuffer<Event>()
        var finished = false
        var waiters: [Waiter] = []
        var nextWaiterID: UInt64 = 0
    }

    private let state = Mutex(State())

    public init() {}

    /// What has arrived and not been read yet.
    public var pending: [Event] { state.withLock { Array($0.buffer) } }

    /// Hands `event` to the oldest waiting reader, or buffers it.
    public func append(_ event: Event) {
        let waiter = state.withLock { state -> Waiter? in
            if state.waiters.isEmpty {
                state.buffer.append(event)
                return nil
            }
            return state.waiters.removeFirst()
        }
        waiter?.timer?.cancel()
        waiter?.continuation.resume(returning: event)
    }

    /// No more events: readers get nil once the buffer is empty.
    public func finish() {
        let waiters = state.withLock { state -> [Waiter] in
            state.finished = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters {
            waiter.timer?.cancel()
            waiter.continuation.resume(returning: nil)
        }
    }

    /// The next event; nil when the producer finished and everything was read.
    ///
    /// - Throws: ``TestClientError/timedOut(_:)`` after `timeout`, `CancellationError`
    ///   when the calling task is cancelled.
    public func next(timeout: Duration) async throws -> Event? {
        let id = state.withLock { state in
            defer { state.nextWaiterID += 1 }
            return state.nextWaiterID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Event?, any Error>) in
                let ready: Event?? = state.withLock { state in
                    if let event = state.buffer.popFirst() { return .some(event) }
                    if state.finished { return .some(nil) }
                    state.waiters.append(Waiter(id: id, continuation: continuation))
                    return nil
                }
                if let ready { return continuation.resume(returning: ready) }
                guard timeout > .zero else { return resume(id, throwing: TestClientError.timedOut(timeout)) }
                let timer = Task {
                    // A cancelled sleep means the waiter was served: nothing to expire.
                    guard (try? await Task.sleep(for: timeout)) != nil else { return }
                    self.resume(id, throwing: TestClientError.timedOut(timeout))
                }
                let parked = state.withLock { state in
                    guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return false }
                    state.waiters[index].timer = timer
                    return true
                }
                if !parked { timer.cancel() }
                // A cancellation that came before the waiter was parked found nothing to end.
                if Task.isCancelled { resume(id, throwing: CancellationError()) }
            }
        } onCancel: {
            resume(id, throwing: CancellationError())
        }
    }

    /// Fails waiter `id` with `error` if it is still waiting.
    private func resume(_ id: UInt64, throwing error: any Error) {
        let waiter = state.withLock { state -> Waiter? in
            guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return state.waiters.remove(at: index)
        }
        waiter?.timer?.cancel()
        waiter?.continuation.resume(throwing: error)
    }
}
