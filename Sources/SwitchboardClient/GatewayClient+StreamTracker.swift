extension GatewayClient {
    /// The recovery half of ``StateMachine``: per stream (the user's, each room's), the last
    /// position handed to the application, and the frames held while that stream's
    /// `resume` or `join` with `since` is unanswered (docs/clients.md, "Stream recovery").
    ///
    /// It decides which message events to emit and when, and returns them; the state
    /// machine decides when a recovery starts and ends, and turns the events into actions.
    /// Frames without a position (a gateway with history off) pass straight through.
    struct StreamTracker: Sendable {
        /// How a stream's recovery ended.
        enum Outcome {
            /// An ack with `recovered:true`: the replay was complete up to `top`.
            case recovered(top: StreamPosition?)
            /// An ack without `recovered:true`: nothing was replayed; the stream goes on after `top`.
            case notRecovered(reason: String?, top: StreamPosition?)
            /// The gateway refused it with an error (or it timed out); with `forget`, the
            /// position is worth nothing to this gateway and is dropped.
            case refused(reason: String, forget: Bool)
        }

        private struct Held {
            var event: Event
            var position: StreamPosition
            /// Keeps frames of one offset in arrival order when sorting.
            var arrival: Int
        }

        private struct Recovery {
            var held: [Held] = []
            /// Why a `join` with `since` was re-sent without it; reported when that join is acked.
            var fallbackReason: String?
        }

        /// The last position handed to the application per stream.
        private(set) var positions: [MessageStream: StreamPosition]
        private var recoveries: [MessageStream: Recovery] = [:]
        private var arrivals = 0

        init(positions: [MessageStream: StreamPosition]) {
            self.positions = positions
        }

        func isRecovering(_ stream: MessageStream) -> Bool {
            recoveries[stream] != nil
        }

        /// A `direct` or `room` frame in `stream` arrived: hold it while the stream recovers,
        /// drop it when its offset is not past the last one handed over in the same epoch,
        /// hand it over otherwise.
        /// - Parameter track: False for a room this client is not in (a frame still on its
        ///   way after a `leave`): it is handed over, but moves no position, so a later
        ///   join does not resume from it.
        mutating func received(_ event: Event, in stream: MessageStream, at position: StreamPosition?, track: Bool = true) -> [Event] {
            guard let position, track else { return [event] }
            if recoveries[stream] != nil {
                arrivals += 1
                recoveries[stream]?.held.append(Held(event: event, position: position, arrival: arrivals))
                return []
            }
            return deliver(event, in: stream, at: position)
        }

        /// A position the gateway gave without a replay (`welcome`, a plain `join`'s ack):
        /// taken when the stream has none yet, or one of another epoch. A position already
        /// held in the same epoch is the client's own and stays: messages before the given
        /// top may still be on their way.
        mutating func adopt(_ position: StreamPosition?, for stream: MessageStream) -> [Event] {
            guard let position else { return [] }
            if let last = positions[stream], last.epoch == position.epoch { return [] }
            return move(stream, to: position)
        }

        /// A `resume` or `join` with `since` was written: hold the stream's frames until it ends.
        mutating func beginRecovery(_ stream: MessageStream) {
            recoveries[stream] = Recovery()
        }

        /// The `join` with `since` was refused with `reason` and is re-sent without `since`;
        /// the recovery goes on until that join is answered.
        mutating func fallBack(_ stream: MessageStream, reason: String) {
            recoveries[stream]?.fallbackReason = reason
        }

        /// The stream's recovery ended: emits the held frames in offset order (each once,
        /// after the position update the outcome asks for), then ``Event/recovered(stream:recovered:reason:)``.
        mutating func finishRecovery(_ stream: MessageStream, _ outcome: Outcome) -> [Event] {
            guard let recovery = recoveries.removeValue(forKey: stream) else { return [] }
            let held = recovery.held.sorted { ($0.position.offset, $0.arrival) < ($1.position.offset, $1.arrival) }
            var events: [Event] = []
            let recovered: Bool
            let reason: String?
            switch outcome {
            case .recovered(let top):
                recovered = true
                reason = nil
                for frame in held { events += deliver(frame.event, in: stream, at: frame.position) }
                // max(own last, top): the ack's top covers what the replay wrote.
                if let top, !isAtOrPast(top, in: stream) { events += move(stream, to: top) }
            case .notRecovered(let ackReason, let top):
                recovered = false
                reason = ackReason
                // The application reloads the stream up to `top`; what follows it is live.
                if let top { events += move(stream, to: top) } else { positions[stream] = nil }
                for frame in held { events += deliver(frame.event, in: stream, at: frame.position) }
            case .refused(let code, let forget):
                recovered = false
                reason = code
                if forget { positions[stream] = nil }
                for frame in held { events += deliver(frame.event, in: stream, at: frame.position) }
            }
            events.append(.recovered(stream: stream, recovered: recovered, reason: recovery.fallbackReason ?? reason))
            return events
        }

        /// The stream's recovery ended without an answer that says anything about it: held
        /// frames are handed over when `deliverHeld` (the connection goes on), dropped
        /// otherwise (it closed: the next `resume` from the unchanged position replays them).
        mutating func abandonRecovery(_ stream: MessageStream, deliverHeld: Bool) -> [Event] {
            guard let recovery = recoveries.removeValue(forKey: stream), deliverHeld else { return [] }
            let held = recovery.held.sorted { ($0.position.offset, $0.arrival) < ($1.position.offset, $1.arrival) }
            return held.flatMap { deliver($0.event, in: stream, at: $0.position) }
        }

        /// The connection ended: every recovery under way is dropped with its held frames.
        mutating func connectionEnded() {
            recoveries.removeAll()
        }

        /// The stream is no longer followed (the room was left or refused for good).
        mutating func forget(_ stream: MessageStream) {
            positions[stream] = nil
            recoveries[stream] = nil
        }

        /// A `welcome` without `position`: the gateway keeps no history, so nothing can be
        /// resumed. Every position held is dropped and reported as not recovered, user
        /// stream first, then rooms by name.
        mutating func historyOff() -> [Event] {
            let streams = positions.keys.sorted { lhs, rhs in
                switch (lhs, rhs) {
                case (.user, .room): true
                case (.room(let a), .room(let b)): a < b
                case (.room, .user), (.user, .user): false
                }
            }
            positions.removeAll()
            recoveries.removeAll()
            return streams.map { .recovered(stream: $0, recovered: false, reason: SwitchboardClientError.Code.historyDisabled.rawValue) }
        }

        // MARK: Handing over

        /// Hands one frame over unless it is a duplicate: same epoch, offset not past the last.
        /// A frame of another epoch means the stream was made anew; it is taken and its epoch adopted.
        private mutating func deliver(_ event: Event, in stream: MessageStream, at position: StreamPosition) -> [Event] {
            if isAtOrPast(position, in: stream) { return [] }
            return [event] + move(stream, to: position)
        }

        /// Whether the stream's position is `position` or later in the same epoch.
        private func isAtOrPast(_ position: StreamPosition, in stream: MessageStream) -> Bool {
            guard let last = positions[stream], last.epoch == position.epoch else { return false }
            return last.offset >= position.offset
        }

        private mutating func move(_ stream: MessageStream, to position: StreamPosition) -> [Event] {
            guard positions[stream] != position else { return [] }
            positions[stream] = position
            return [.position(stream: stream, position: position)]
        }
    }
}
