"""Image files in and out: :mod:`~meddeblur.io.decode` (read), :mod:`~meddeblur.io.encode` (write, to bytes or files),
:mod:`~meddeblur.io.pixels` (the arrays the public functions take), :mod:`~meddeblur.io.formats` (the format table and
the decoded image type), :mod:`~meddeblur.io.png`, :mod:`~meddeblur.io.tiff`, :mod:`~meddeblur.io.dicom`,
:mod:`~meddeblur.io.provenance` (records embedded in outputs), :mod:`~meddeblur.io.ownership` (reading them back; the
overwrite rule), :mod:`~meddeblur.io.derived` (a result written as a derived file of its source) and
:mod:`~meddeblur.io.listing` (the images of a folder).

The package itself imports nothing, so any of its modules can be imported alone.
"""
