"""The local model: the client (streamed, watched calls), the endpoint guard, the safe call
(a reply is data, validated), the model server's lifecycle, and the model file store.
"""
