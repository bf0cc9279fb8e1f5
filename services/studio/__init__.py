"""The studio: a web page over the editor where a face is edited with a slider per attribute."""
