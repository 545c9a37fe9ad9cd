"""The PBX feeds: Asterisk AudioSocket (TCP) and chan_websocket, FreeSWITCH mod_audio_stream /
mod_audio_fork and Genesys AudioHook. Each protocol module only turns its protocol into a track's
raw audio; timeline.py cuts that into 20 ms packets and session.py stores them through
core/ingestion.py exactly as the Twilio media stream does (docs/pbx.md)."""
